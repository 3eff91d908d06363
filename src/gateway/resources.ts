import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { BadRequestError, ForbiddenError, NotFoundError, StoreUnavailableError, UpstreamError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { Pipeline, RequestContext } from "../core/pipeline.js";
import type { Action } from "../core/policy/compile.js";
import type { Owner } from "../core/policy/conditions.js";
import { resourceKey } from "../core/policy/evaluate.js";
import { routeMatchPath } from "../core/policy/routes.js";
import type { ResilientRecordStore } from "../core/stores/resilient.js";
import type { OwnerRecord } from "../core/stores/types.js";
import type { Catalog, CatalogMatch } from "./catalog.js";
import { discardBody, type UpstreamResponse } from "./forward.js";
import { jsonMember, readJsonBody, type BodyLimits, type BufferedBody } from "./request-body.js";
import { memberValue, parseJsonWithin, scanJson } from "./json.js";
import { servedModel } from "./upstreams.js";

/**
 * Stage 6 in the gateway: the resource policy applied to real OpenAI-style
 * traffic, driven by the catalog (catalog.ts).
 *
 * - read/update/delete of `/{type}/{id}[/...]` (every method: GET/HEAD read,
 *   DELETE delete, any other update): the owner is looked up in the record
 *   store and the policy decides; a denied read is a 404 (the caller must not
 *   learn that the resource exists), anything else a 403.
 * - a resource named in the body (`model` of an inference call, Ollama's
 *   `model`/`name`, a run's `assistant_id`): checked the same way; a denied
 *   model read → 404 as if the model did not exist, before anything reaches
 *   the upstream. The body is read as every server could read it (JSON
 *   whatever the Content-Type, form fields): two readings that disagree are a 400.
 * - create named by the request (a pulled model): `create` of that id; the
 *   caller is recorded as owner after a 2xx answer when it has none.
 * - create: checked as `create` of `type::*`, and forwarded only when the
 *   record store takes writes (else 503 `store_unavailable`, nothing sent).
 *   After a 2xx answer the new id (from the JSON body, or the first event of
 *   a stream that names it) is recorded with the caller as owner before the
 *   client sees it: a JSON answer is held, a stream is held at the event
 *   carrying the id. When the write fails the owner is kept pending (the
 *   store wrapper retries it) and the client gets 503 (JSON) or a cut stream.
 *   An answer that names no id is refused with 502 (the resource could not
 *   be owned), unless the route's path names it.
 * - list: the upstream's page is filtered to what the caller may read (an
 *   answer that is not a list is refused with 502, never relayed); when
 *   filtering leaves fewer items than asked for and the upstream has more,
 *   further upstream pages are fetched (`after` = the upstream's last id), so
 *   a page never ends early while readable items remain.
 */

/** Largest upstream answer the gateway buffers to filter or to read an id from. */
export const MAX_INSPECTED_RESPONSE_BYTES = 16 * 1024 * 1024;
/** Upper bound on upstream pages fetched to fill one filtered page. */
export const MAX_LIST_PAGES = 50;
/** How long the owner of a model named in a request body is reused (see `bodyOwnerOf`). */
export const OWNER_CACHE_TTL_MS = 500;
/** Most model owners remembered; past it the cache starts over. */
const OWNER_CACHE_MAX_ENTRIES = 10_000;
/** Longest SSE line scanned for a created resource's id; a longer one cuts the stream (fail closed). */
export const MAX_SCANNED_EVENT_BYTES = 1024 * 1024;
/** A list page size when the client asks none: OpenAI's default. */
const DEFAULT_LIST_LIMIT = 20;

/**
 * Resources Llama Stack keeps in its registry: a denied action other than a
 * read is a 403 there (and here). Every other type is store-backed (files,
 * responses, conversations, batches, ...): the reference filters those by
 * action, so any denied action is the same 404 as a missing resource.
 */
const REGISTRY_TYPES: ReadonlySet<string> = new Set(["model", "vector_store", "vector_db", "shield", "tool_group", "dataset", "benchmark", "scoring_function"]);

/**
 * The reference's not-found wording per type (its ResourceNotFoundError
 * subclasses): label, the client call that lists them, and its plural when
 * it is not the label plus "s". A type it does not name reads `Widget 'x' not found.`
 */
const NOT_FOUND_WORDING: Readonly<Record<string, readonly [label: string, list?: string, plural?: string]>> = {
  model: ["Model", "models.list"],
  file: ["File", "files.list"],
  vector_store: ["Vector Store", "vector_dbs.list"],
  vector_db: ["Vector Store", "vector_dbs.list"],
  response: ["Response", "responses.list"],
  conversation: ["Conversation"],
  batch: ["Batch", "batches.list", "batches"],
  dataset: ["Dataset", "datasets.list"],
  tool_group: ["Tool Group", "toolgroups.list"],
};

/**
 * The 404 for a resource the caller may not see, worded exactly as the
 * reference words a missing one, so that hidden and missing cannot be told
 * apart: `Model 'm' not found. Use 'client.models.list()' to list available Models.`
 */
function notFound(type: string, id: string): NotFoundError {
  const [label, list, plural] = NOT_FOUND_WORDING[type] ?? [type.split(/[_-]/).map((w, i) => (i === 0 ? w.charAt(0).toUpperCase() + w.slice(1) : w)).join(" ")];
  const hint = list === undefined ? "" : ` Use 'client.${list}()' to list available ${plural ?? `${label}s`}.`;
  return new NotFoundError(`${label} '${id}' not found.${hint}`, type === "model" ? "model_not_found" : "not_found");
}

/** What `before` decided for one request: what to forward and what to do with the answer. */
export interface GuardedRequest {
  readonly match: CatalogMatch;
  /** The buffered body to forward instead of the client's stream (when it was read). */
  readonly body: BufferedBody | undefined;
  /** True when the answer must be read (create, list, delete): ask the upstream for an uncompressed one. */
  readonly inspectResponse: boolean;
  /** The resource's id when the request names it (path or body): what a create records and a delete forgets. */
  readonly resourceId?: string | undefined;
  /** A stored answer (`store: true` on a chat completion): the type whose owner is recorded from the answer's id. */
  readonly stores?: string | undefined;
  /** The model the request names, as served (an alias's target; upstreams.ts): what picks the upstream. */
  readonly model?: string | undefined;
  /** The path to forward when it is not the client's: a model read through an alias names the served model. */
  readonly path?: string | undefined;
  /** The upstream the resource it names was created through (several upstreams): the request goes there. */
  readonly upstream?: string | undefined;
}

export interface ResourceGuardOptions {
  readonly pipeline: Pipeline;
  readonly catalog: Catalog;
  /** Where owners are recorded (bounded calls, pending owners: stores/resilient.ts); without one every resource is unowned. */
  readonly store: ResilientRecordStore | undefined;
  readonly log: Logger;
  /**
   * With several upstreams, their names: a resource created through one is
   * recorded with its name, and a request on a resource whose upstream is
   * gone is a 404. Undefined with one upstream: nothing is recorded or routed.
   */
  readonly upstreams?: ReadonlySet<string> | undefined;
  /** `model_aliases`: a model named by an alias is checked and forwarded as its target. Default: none. */
  readonly aliases?: Readonly<Record<string, string>> | undefined;
  readonly now?: () => number;
}

/** Fetches another page of a list from the upstream (same request, another query string). */
export type FetchPage = (query: string) => Promise<UpstreamResponse>;

export interface ResourceGuard {
  /** Before forwarding: throws 404/403 when denied; undefined when the request touches no catalogued resource. */
  before(raw: IncomingMessage, context: RequestContext, limits: BodyLimits): Promise<GuardedRequest | undefined>;
  /** After the upstream answered (`through`: its name, with several upstreams): records owners, filters lists; returns the answer to relay. */
  after(guarded: GuardedRequest, context: RequestContext, upstream: UpstreamResponse, fetchPage: FetchPage, through?: string): Promise<UpstreamResponse>;
}

/** Builds the guard; see the module comment. */
export function createResourceGuard({ pipeline, catalog, store, log, upstreams, aliases = {}, now = Date.now }: ResourceGuardOptions): ResourceGuard {
  async function ownerOf(type: string, id: string): Promise<Owner | undefined> {
    return store ? await store.findOwner(type, id) : undefined;
  }

  // The model named in an inference body is looked up on every inference
  // request: its owner is reused for OWNER_CACHE_TTL_MS (a store lookup per
  // request was ~5 % of the gateway's CPU). Changes made through this gateway
  // (create, delete) apply at once; another process's, within the TTL.
  const modelOwners = new Map<string, { owner: Owner | undefined; until: number }>();
  async function bodyOwnerOf(type: string, id: string): Promise<Owner | undefined> {
    if (!store) return undefined;
    const key = resourceKey(type, id);
    const at = now();
    const hit = modelOwners.get(key);
    if (hit && hit.until > at) return hit.owner;
    const owner = await store.findOwner(type, id);
    if (modelOwners.size >= OWNER_CACHE_MAX_ENTRIES) modelOwners.clear();
    modelOwners.set(key, { owner, until: at + OWNER_CACHE_TTL_MS });
    return owner;
  }

  function deny(type: string, id: string | undefined, action: string): never {
    // A denied read looks like a missing resource; so does any denied action on
    // a store-backed resource (the reference filters those by action).
    if (id !== undefined && (action === "read" || !REGISTRY_TYPES.has(type))) throw notFound(type, id);
    throw new ForbiddenError(`Access denied: you may not ${action} this ${type}`, "access_denied");
  }

  /**
   * Checks `action` on `type::id` against its recorded owner; throws 404/403
   * when denied, and 404 when the upstream it was created through is gone.
   * Resolves with that upstream's name (several upstreams only).
   */
  async function check(context: RequestContext, type: string, action: Action, id: string): Promise<string | undefined> {
    const owner = type === "model" ? await bodyOwnerOf(type, id) : await ownerOf(type, id);
    if (!pipeline.checkAccess(context, action, { key: resourceKey(type, id), owner }).allowed) deny(type, id, action);
    const through = upstreams ? (owner as OwnerRecord | undefined)?.upstream : undefined;
    // Removed by a reload: what it held is out of reach, as if it never existed.
    if (through !== undefined && !upstreams!.has(through)) throw notFound(type, id);
    return through;
  }

  return {
    async before(raw, context, limits) {
      const match = catalog.match(raw.method ?? "GET", routeMatchPath(context.path), context.path);
      // Undeclared routes never get here (the pipeline refused them); declared ones that touch no resource pass.
      if (!match || match.action === "forward") return undefined;
      const { entry } = match;
      const needsBody = match.bodyFields !== undefined || (entry.reads?.length ?? 0) > 0 || entry.stores !== undefined;
      let body = needsBody ? await readJsonBody(raw, limits) : undefined;
      const contentType = String(raw.headers["content-type"] ?? "");
      const named = body ? bodyReader(body, contentType) : undefined;

      let id = match.pathId;
      // The model as served: an alias is replaced by its target before any check (a rule on the alias never matches).
      let model: string | undefined;
      let path: string | undefined;
      if (match.bodyFields !== undefined) {
        id = await named!(match.bodyFields);
        if (id === undefined && !(entry.optional && match.action !== "create" && match.action !== "delete")) {
          throw new BadRequestError(`Missing or invalid ${match.bodyFields[0]}: a string is required`, "invalid_request");
        }
        if (id !== undefined && match.type === "model") ({ body, model: id } = servedModel(body!, match.bodyFields, id, aliases, contentType));
      } else if (id !== undefined && match.type === "model" && Object.hasOwn(aliases, id) && context.path.endsWith(`/${id}`)) {
        // GET /v1/models/{alias}: asked of the upstream serving the target, by the target's name.
        path = `${context.path.slice(0, -id.length)}${aliases[id]}`;
        id = aliases[id]!;
      }
      if (match.type === "model") model = id;
      // The upstream a named resource lives on (several upstreams): the first the checks find.
      let sticky: string | undefined;
      switch (match.action) {
        case "list":
          break;
        case "create":
          // Created under a name the client chose (a model pulled or copied): that name's policy decides; else any of the type.
          if (id !== undefined) await check(context, match.type, "create", id);
          else if (!pipeline.checkAccess(context, "create", { key: resourceKey(match.type, "*"), owner: undefined }).allowed) deny(match.type, undefined, "create");
          // Nothing is created upstream that could not be owned: a store that
          // takes no writes refuses the create before it is forwarded.
          await store?.ensureWritable();
          break;
        default:
          // A route without an identifier to check (a config route reading a fixed resource): only the route was declared.
          if (id !== undefined) sticky = await check(context, match.type, match.action, id);
          else if (match.bodyFields === undefined) return undefined;
      }
      // Other resources the body names: each is read (a response's model, a run's assistant, a copy's source).
      for (const read of entry.reads ?? []) {
        let other = await named!([read.field]);
        if (other === undefined) {
          if (read.optional) continue;
          throw new BadRequestError(`Missing or invalid ${read.field}: a string is required`, "invalid_request");
        }
        if (read.type === "model") {
          ({ body, model: other } = servedModel(body!, [read.field], other, aliases, contentType));
          model = other;
        }
        sticky ??= await check(context, read.type, "read", other);
      }
      // A chat completion kept by the upstream (`store: true`) is a create of a stored chat completion.
      let stores: string | undefined;
      if (entry.stores !== undefined && (await named!(["store"], true)) === "true") {
        if (!pipeline.checkAccess(context, "create", { key: resourceKey(entry.stores, "*"), owner: undefined }).allowed) deny(entry.stores, undefined, "create");
        await store?.ensureWritable();
        stores = entry.stores;
      }
      const inspectResponse = match.action === "create" || match.action === "list" || match.action === "delete" || stores !== undefined;
      return { match, body, inspectResponse, resourceId: id, stores, model, path, upstream: sticky };
    },

    async after(guarded, context, upstream, fetchPage, through) {
      // One upstream: nothing to remember (upstreams.ts routes everything there).
      if (!upstreams) through = undefined;
      const { match } = guarded;
      if (upstream.status < 200 || upstream.status >= 300) return upstream;
      const id = guarded.resourceId;
      if (match.action === "delete") {
        // The resource is gone: forget its owner (a later id reuse starts unowned).
        const whole = match.pathId === undefined || match.entry.path.endsWith("}");
        if (store && id !== undefined && whole && match.entry.record !== false) {
          await store.deleteOwner(match.type, id).catch((err: unknown) => log.warn({ err: String(err) }, "could not forget an owner"));
          modelOwners.delete(resourceKey(match.type, id));
        }
        return upstream;
      }
      if (match.action === "create") {
        // Named by the request (a pulled model): recorded unless it already has an owner, whose it stays.
        if (id !== undefined) {
          if (match.entry.record !== false && !(await ownerOf(match.type, id))) await record(match, context, id, through);
          return upstream;
        }
        return recordCreated(guarded, context, upstream, through);
      }
      if (match.action === "list") return filterList(guarded, context, upstream, fetchPage);
      if (guarded.stores !== undefined) {
        return recordCreated({ ...guarded, match: { ...match, type: guarded.stores, responseField: "id" } }, context, upstream, through);
      }
      return upstream;
    },
  };

  /**
   * Records the caller as the owner of `type`/`id`. A failed write rejects
   * with 503 saying the resource was created (the store wrapper keeps the
   * owner pending and retries it, so the resource is never unowned).
   */
  async function record(match: CatalogMatch, context: RequestContext, id: string, through: string | undefined): Promise<void> {
    if (!store || !context.user) return;
    const owner: OwnerRecord = {
      type: match.type,
      id,
      principal: context.user.principal,
      attributes: context.user.attributes,
      createdAt: now(),
      ...(through !== undefined ? { upstream: through } : {}),
    };
    const resource = resourceKey(match.type, id);
    modelOwners.delete(resource);
    try {
      await store.putOwner(owner);
    } catch {
      log.error({ audit: true, event: "owner_pending", principal: owner.principal, resource }, "resource created upstream, owner not recorded yet: held as pending");
      throw new StoreUnavailableError(
        `The ${match.type} was created but its owner could not be recorded; it stays private to you and is recorded as soon as the record store answers`,
      );
    }
    log.info({ audit: true, event: "owner_recorded", principal: owner.principal, resource }, "resource owner recorded");
  }

  async function recordCreated(guarded: GuardedRequest, context: RequestContext, upstream: UpstreamResponse, through: string | undefined): Promise<UpstreamResponse> {
    const field = guarded.match.responseField ?? "id";
    const type = String(upstream.headers["content-type"] ?? "");
    if (type.startsWith("text/event-stream")) return { ...upstream, body: ownedStream(guarded.match, context, upstream.body, field, through) };
    const bytes = await readAll(upstream.body);
    // An answer naming no id cannot be owned: the route's own id when it has
    // one, else refused rather than handed on as an unowned (open) resource.
    const id = idIn(parseJson(bytes), field) ?? guarded.match.pathId;
    if (id === undefined) {
      log.error({ resource_type: guarded.match.type }, "created resource has no id in the upstream's answer: refused with 502");
      throw new UpstreamError("Upstream created a resource without naming it");
    }
    await record(guarded.match, context, id, through);
    return withBody(upstream, bytes);
  }

  /**
   * A created resource's stream, held at the event that names it: the bytes
   * before that event go on as they come, the event itself only once its
   * owner is recorded. Every event is scanned until one names the id (each
   * line bounded by {@link MAX_SCANNED_EVENT_BYTES}), then the rest passes
   * untouched. A failed write cuts the stream: the client never sees the id
   * of a resource whose owner is not in the store.
   */
  function ownedStream(match: CatalogMatch, context: RequestContext, source: Readable, field: string, through: string | undefined): Readable {
    const scan = async function* (chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
      // Bytes, not text: a character split across two chunks must reach the client intact.
      let partial: Buffer = Buffer.alloc(0);
      let found = false;
      for await (const chunk of chunks) {
        if (found) {
          yield chunk;
          continue;
        }
        partial = partial.length === 0 ? chunk : Buffer.concat([partial, chunk]);
        let start = 0;
        for (let end = partial.indexOf(0x0a); end !== -1; end = partial.indexOf(0x0a, start)) {
          const lineStart = start;
          start = end + 1;
          const id = eventId(partial.subarray(lineStart, end), field);
          if (id === undefined) continue;
          found = true;
          if (lineStart > 0) yield partial.subarray(0, lineStart);
          await record(match, context, id, through);
          yield partial.subarray(lineStart);
          break;
        }
        if (found) continue;
        // Complete lines that named nothing go on; the incomplete one waits for its end.
        if (start > 0) {
          yield partial.subarray(0, start);
          partial = partial.subarray(start);
        }
        if (partial.length > MAX_SCANNED_EVENT_BYTES) throw new UpstreamError("Upstream event too large to inspect");
      }
      if (!found && partial.length > 0) {
        const id = eventId(partial, field);
        if (id !== undefined) {
          found = true;
          await record(match, context, id, through);
        }
        yield partial;
      }
      if (!found) log.warn({ resource_type: match.type }, "created resource's stream named no id: nothing to record");
    };
    const out = Readable.from(scan(source), { objectMode: false });
    // Where the client goes away, the upstream goes too.
    out.once("close", () => {
      if (!source.destroyed) source.destroy();
    });
    return out;
  }

  async function filterList(guarded: GuardedRequest, context: RequestContext, upstream: UpstreamResponse, fetchPage: FetchPage): Promise<UpstreamResponse> {
    const items = guarded.match.entry.items;
    if (items && !(items.field === "data" && items.id === "id")) return filterItems(guarded, context, upstream, items);
    const bytes = await readAll(upstream.body);
    const first = parseJson(bytes) as ListPage | undefined;
    if (!first || !Array.isArray(first.data)) {
      // Not an OpenAI list (`{data: [...]}`): its items cannot be named, so
      // they cannot be filtered, and an unfiltered list shows every tenant's.
      log.error({ resource_type: guarded.match.type }, "list route answered something that is not a list: refused with 502");
      throw new UpstreamError("Upstream answered a list route with something that is not a list");
    }
    const params = new URLSearchParams(context.query);
    const paginated = typeof first.has_more === "boolean";
    const limit = Number(params.get("limit")) > 0 ? Number(params.get("limit")) : paginated ? DEFAULT_LIST_LIMIT : Infinity;
    const kept: Record<string, unknown>[] = [];
    let page: ListPage = first;
    let upstreamHasMore = false;
    for (let pages = 1; ; pages++) {
      kept.push(...(await readable(guarded.match.type, context, page.data)));
      upstreamHasMore = page.has_more === true;
      const lastId = idIn(page.data.at(-1), "id") ?? (typeof page.last_id === "string" ? page.last_id : undefined);
      if (kept.length >= limit || !upstreamHasMore || lastId === undefined) break;
      if (pages >= MAX_LIST_PAGES) break;
      params.set("after", lastId);
      const next = await fetchPage(params.toString());
      if (next.status < 200 || next.status >= 300) {
        discardBody(next.body);
        throw new UpstreamError("Upstream failed while listing");
      }
      const parsed = parseJson(await readAll(next.body)) as ListPage | undefined;
      if (!parsed || !Array.isArray(parsed.data)) throw new UpstreamError("Upstream answered a list without data");
      page = parsed;
    }
    const data = kept.slice(0, limit);
    const out: Record<string, unknown> = { ...first, data };
    if (paginated) {
      out.has_more = kept.length > limit || upstreamHasMore;
      out.first_id = idIn(data[0], "id") ?? null;
      out.last_id = idIn(data.at(-1), "id") ?? null;
    }
    return withBody(upstream, Buffer.from(JSON.stringify(out)));
  }

  /** A list in another shape than OpenAI's (Ollama's `{models: [{name}]}`): one unpaginated array, filtered. */
  async function filterItems(guarded: GuardedRequest, context: RequestContext, upstream: UpstreamResponse, items: { field: string; id: string }): Promise<UpstreamResponse> {
    const bytes = await readAll(upstream.body);
    const page = parseJson(bytes);
    const list = typeof page === "object" && page !== null ? (page as Record<string, unknown>)[items.field] : undefined;
    if (!Array.isArray(list)) {
      log.warn({ resource_type: guarded.match.type }, "list route answered something that is not a list: relayed unfiltered");
      return withBody(upstream, bytes);
    }
    const kept = await readable(guarded.match.type, context, list, items.id);
    return withBody(upstream, Buffer.from(JSON.stringify({ ...(page as Record<string, unknown>), [items.field]: kept })));
  }

  async function readable(type: string, context: RequestContext, items: unknown[], idField = "id"): Promise<Record<string, unknown>[]> {
    const ids = items.map((item) => idIn(item, idField)).filter((id): id is string => id !== undefined);
    const owners = store ? await store.findOwners(type, ids) : new Map<string, OwnerRecord>();
    const out: Record<string, unknown>[] = [];
    for (const item of items) {
      const id = idIn(item, idField);
      if (id === undefined) continue; // an item we cannot name, we cannot authorise
      if (pipeline.checkAccess(context, "read", { key: resourceKey(type, id), owner: owners.get(id) }).allowed) out.push(item as Record<string, unknown>);
    }
    return out;
  }
}

/** Values a body field may not hold when it is a flag that is off (`store`); anything else counts as on. */
const FLAG_OFF = new Set<unknown>([false, null, 0, "false", "0", "no", "off", "f", "n", ""]);

/**
 * Reads fields of a buffered body as any server could read them: as JSON
 * whatever the Content-Type says (Ollama and others parse JSON from any
 * body), and as form fields (multipart or urlencoded). The reader takes the
 * names a field goes by (`model`, `name`) and returns the one value they
 * hold: a string, or an object's string `id` (`conversation: {id}`);
 * undefined when none is present. A value of another kind, or two readings
 * (or two names) that disagree, is a 400: the check and the upstream must
 * see the same resource. With `flag`, returns "true" when the field is
 * present and not off (`store: true`, `"yes"`, `1`: what a lax parser
 * takes for true).
 */
function bodyReader(body: BufferedBody, contentTypeHeader: string): (names: readonly string[], flag?: boolean) => Promise<string | undefined> {
  const bytes = body.parts.length === 1 ? body.parts[0]! : Buffer.concat(body.parts as Buffer[], body.length);
  // Its JSON members, whatever the Content-Type said (scanned within the depth limit, parsed one member at a time).
  let member: (name: string) => unknown = () => undefined;
  if (body.json?.valid) member = (name) => jsonMember(body, name);
  else if (body.json === undefined && bytes.length > 0) {
    const scan = scanJson(bytes);
    if (scan.valid) member = (name) => memberValue(bytes, scan, name);
  }
  let form: Promise<{ getAll(name: string): unknown[] } | undefined> | undefined;
  const formOf = () =>
    (form ??= (async () => {
      if (body.contentType === "application/x-www-form-urlencoded") return new URLSearchParams(bytes.toString("utf8"));
      if (body.contentType !== "multipart/form-data") return undefined;
      try {
        return await new Response(bytes, { headers: { "content-type": contentTypeHeader } }).formData();
      } catch {
        throw new BadRequestError("Invalid multipart/form-data body", "invalid_body");
      }
    })());
  return async (names, flag = false) => {
    const values: unknown[] = [];
    const parsed = await formOf();
    for (const name of names) {
      const value = member(name);
      if (value !== undefined) values.push(value);
      if (parsed) values.push(...parsed.getAll(name));
    }
    if (values.length === 0) return undefined;
    const seen = new Set<string>();
    for (const value of values) {
      if (flag) {
        if (!FLAG_OFF.has(value)) seen.add("true");
        continue;
      }
      const id = typeof value === "string" ? value : idIn(value, "id");
      if (id === undefined || id === "") throw new BadRequestError(`Missing or invalid ${names[0]}: a string is required`, "invalid_request");
      seen.add(id);
    }
    if (seen.size > 1) throw new BadRequestError(`Ambiguous ${names.join("/")}: the body names more than one`, "invalid_request");
    return seen.values().next().value;
  };
}

interface ListPage {
  data: unknown[];
  has_more?: unknown;
  last_id?: unknown;
  [key: string]: unknown;
}

const DATA_PREFIX = Buffer.from("data:");

/** The id an SSE `data:` line names: in `response` (Responses API events) or at the top; undefined for any other line. */
function eventId(line: Buffer, field: string): string | undefined {
  if (!line.subarray(0, DATA_PREFIX.length).equals(DATA_PREFIX) || !line.includes(field)) return undefined;
  const event = parseJson(line.subarray(DATA_PREFIX.length));
  return idIn((event as { response?: unknown } | undefined)?.response, field) ?? idIn(event, field);
}

function idIn(value: unknown, field: string): string | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const id = (value as Record<string, unknown>)[field];
  return typeof id === "string" && id !== "" ? id : undefined;
}

function parseJson(bytes: Buffer): unknown {
  return parseJsonWithin(bytes.toString("utf8"));
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_INSPECTED_RESPONSE_BYTES) {
      body.destroy();
      throw new UpstreamError("Upstream answer too large to inspect");
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** The same answer with a new (already read) body and its length. */
function withBody(upstream: UpstreamResponse, bytes: Buffer): UpstreamResponse {
  const headers: Record<string, string | string[] | undefined> = { ...upstream.headers, "content-length": String(bytes.length) };
  delete headers["transfer-encoding"];
  delete headers["content-encoding"];
  return { status: upstream.status, headers, body: Readable.from([bytes], { objectMode: false }) };
}
