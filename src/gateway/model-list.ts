import { Readable } from "node:stream";
import { NotFoundError, UpstreamError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { errorMessage } from "../core/carry-over.js";
import { discardBody, type UpstreamResponse } from "./forward.js";
import { parseJsonWithin } from "./json.js";
import type { Upstream } from "./upstreams.js";

/**
 * `GET /v1/models` (and Ollama's `GET /api/tags` and `GET /api/ps`) with
 * several upstreams: every upstream's list, fetched at once, merged (each
 * model once, the first upstream's entry kept, in upstream order), held
 * {@link MODEL_LIST_TTL_MS} so that a burst of list calls asks each server
 * once. An upstream that does not speak the list's API (a vLLM asked for
 * `/api/tags`: 404) is left out. The policy filters the merged list as it
 * filters one upstream's (resources.ts), and an alias is listed (as its
 * target's entry, under the alias's id) when its target is in what the
 * caller may read.
 */

/** How long a merged list is reused. */
export const MODEL_LIST_TTL_MS = 3_000;
/** How long one upstream may take to list its models before it is left out. */
const MODEL_LIST_TIMEOUT_MS = 5_000;
/** Largest list read from one upstream. */
const MAX_MODEL_LIST_BYTES = 4 * 1024 * 1024;

export interface ModelLists {
  /**
   * The merged list at `path` (`/v1/models`, Llama Stack's
   * `/v1/openai/v1/models`) as an upstream answer. An upstream that fails
   * or answers no list is left out (and logged); when every one does: 502.
   */
  fetch(path: string): Promise<UpstreamResponse>;
}

/** Where a merged list's entries are (`field`) and which of their members names the model (`id`). */
interface ListShape {
  readonly field: "data" | "models";
  readonly id: "id" | "name";
}

const OPENAI_LIST: ListShape = { field: "data", id: "id" };
const OLLAMA_LIST: ListShape = { field: "models", id: "name" };

/** The model lists the gateway merges, by path: OpenAI's (also under Llama Stack's prefix) and Ollama's. */
const MERGED_LISTS: ReadonlyMap<string, ListShape> = new Map([
  ["/v1/models", OPENAI_LIST],
  ["/v1/openai/v1/models", OPENAI_LIST],
  ["/api/tags", OLLAMA_LIST],
  ["/api/ps", OLLAMA_LIST],
]);

/** Is this a request for a model list the gateway merges? */
export function isModelList(method: string, path: string): boolean {
  return method === "GET" && MERGED_LISTS.has(path);
}

/** The model a `GET /v1/models/{id}` names (and the path before it); undefined for any other path. */
export function modelInPath(path: string): { prefix: string; id: string } | undefined {
  for (const prefix of ["/v1/models/", "/v1/openai/v1/models/"]) {
    if (path.startsWith(prefix) && path.length > prefix.length) return { prefix, id: path.slice(prefix.length) };
  }
  return undefined;
}

export function createModelLists(upstreams: readonly Upstream[], log: Logger, now: () => number = Date.now): ModelLists {
  const cache = new Map<string, { until: number; merged: Promise<Buffer> }>();

  async function listOf(upstream: Upstream, path: string, shape: ListShape): Promise<Record<string, unknown>[]> {
    const headers = ["accept", "application/json", "accept-encoding", "identity"];
    if (upstream.config.api_key !== undefined) headers.push("authorization", `Bearer ${upstream.config.api_key}`);
    const answer = await upstream.forwarder.forward({ method: "GET", path, query: "", headers, body: null, signal: AbortSignal.timeout(MODEL_LIST_TIMEOUT_MS) });
    if (answer.status !== 200) {
      discardBody(answer.body);
      throw new ListRefused(answer.status);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_MODEL_LIST_BYTES) {
        answer.body.destroy();
        throw new Error("list too large");
      }
      chunks.push(chunk);
    }
    const page = parseJsonWithin(Buffer.concat(chunks, size).toString("utf8")) as Record<string, unknown> | undefined;
    const items = page?.[shape.field];
    if (!Array.isArray(items)) throw new Error("not a list");
    return items.filter((item): item is Record<string, unknown> => typeof item === "object" && item !== null && typeof (item as Record<string, unknown>)[shape.id] === "string");
  }

  async function merge(path: string, shape: ListShape): Promise<Buffer> {
    const lists = await Promise.allSettled(upstreams.map((upstream) => listOf(upstream, path, shape)));
    const seen = new Set<string>();
    const items: Record<string, unknown>[] = [];
    let answered = 0;
    let notServed = 0;
    lists.forEach((list, i) => {
      if (list.status === "rejected") {
        // A server without this API (404, 405) is expected among several kinds; anything else is worth a warning.
        const unserved = list.reason instanceof ListRefused && (list.reason.status === 404 || list.reason.status === 405);
        if (unserved) notServed++;
        log[unserved ? "debug" : "warn"]({ upstream: upstreams[i]!.name, path, err: errorMessage(list.reason) }, "model list: upstream left out");
        return;
      }
      answered++;
      for (const item of list.value) {
        const id = item[shape.id] as string;
        if (seen.has(id)) continue;
        seen.add(id);
        items.push(item);
      }
    });
    if (answered === 0) {
      if (notServed === upstreams.length) throw new NotFoundError(`No upstream serves GET ${path}`);
      throw new UpstreamError("No upstream answered its model list");
    }
    return Buffer.from(JSON.stringify(shape === OPENAI_LIST ? { object: "list", data: items } : { [shape.field]: items }));
  }

  return {
    async fetch(path) {
      const at = now();
      let hit = cache.get(path);
      if (!hit || hit.until <= at) {
        hit = { until: at + MODEL_LIST_TTL_MS, merged: merge(path, MERGED_LISTS.get(path) ?? OPENAI_LIST) };
        cache.set(path, hit);
        // A failure is not reused: the next call asks again.
        hit.merged.catch(() => cache.delete(path));
      }
      const bytes = await hit.merged;
      return listAnswer(bytes);
    },
  };
}

/**
 * Adds each alias whose target is listed in `answer`, the merged list at
 * `path` (already filtered by the policy): the target's entry under the
 * alias's name, after the target. Anything that is not a list passes unchanged.
 */
export async function withAliases(answer: UpstreamResponse, path: string, aliases: Readonly<Record<string, string>>): Promise<UpstreamResponse> {
  const { field, id: idField } = MERGED_LISTS.get(path) ?? OPENAI_LIST;
  const chunks: Buffer[] = [];
  for await (const chunk of answer.body as AsyncIterable<Buffer>) chunks.push(chunk);
  const bytes = Buffer.concat(chunks);
  const page = parseJsonWithin(bytes.toString("utf8")) as Record<string, unknown> | undefined;
  const entries = page?.[field];
  if (answer.status !== 200 || !Array.isArray(entries)) return { ...answer, body: Readable.from([bytes], { objectMode: false }) };
  const nameOf = (item: unknown) => (item as Record<string, unknown> | null)?.[idField];
  const listed = new Set(entries.map(nameOf));
  const out: unknown[] = [];
  for (const item of entries) {
    out.push(item);
    const id = nameOf(item);
    for (const [alias, target] of Object.entries(aliases)) {
      if (target !== id || listed.has(alias)) continue;
      const entry: Record<string, unknown> = { ...(item as Record<string, unknown>), [idField]: alias };
      // Ollama names a model twice, `name` and `model`.
      if (idField === "name" && entry.model === target) entry.model = alias;
      out.push(entry);
    }
  }
  return listAnswer(Buffer.from(JSON.stringify({ ...page, [field]: out })));
}

/** An upstream's answer to a list request that was not a list (its status). */
class ListRefused extends Error {
  constructor(readonly status: number) {
    super(`answered ${status}`);
  }
}

/** A list as an upstream's JSON answer. */
function listAnswer(bytes: Buffer): UpstreamResponse {
  return {
    status: 200,
    headers: { "content-type": "application/json", "content-length": String(bytes.length) },
    body: Readable.from([bytes], { objectMode: false }),
  };
}
