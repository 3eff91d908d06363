import type { UpstreamConfig } from "../core/config/schema.js";
import { BadRequestError, NotFoundError, RouteNotFoundError } from "../core/errors.js";
import { createForwarder, type Forwarder } from "./forward.js";
import { jsonMember, withFormField, withJsonMemberScanned, type BufferedBody } from "./request-body.js";

/**
 * Several upstreams, routed by model (DESIGN.md "Several upstreams, routed
 * by model", docs/upstreams.md).
 *
 * A request naming a model goes to the upstreams whose `models` match it:
 * an exact name or a glob; `"*"` only when no other upstream names the
 * model. Among several, the one with the fewest requests in flight, ties to
 * the earliest in the list. A request without a model goes to the first
 * upstream holding `"*"`. Passive health: an upstream failing
 * {@link HealthOptions.failures} times in a row (connect error, reset,
 * timeout, 502/503/504) is skipped for {@link HealthOptions.skipMs}, then
 * used again; when every matching upstream is skipped they are tried anyway.
 *
 * A single `upstream:` is one upstream serving every model: {@link Router.single}
 * is set and the proxy asks nothing else of the router (no model is read for it).
 */

/** When an upstream is skipped, and for how long. Internal: not a config key (tests shorten them). */
export interface HealthOptions {
  /** Failures in a row that make an upstream skipped. Default 5. */
  readonly failures: number;
  /** How long it is skipped. Default 10 s. */
  readonly skipMs: number;
  readonly now?: () => number;
}

export const DEFAULT_HEALTH: HealthOptions = { failures: 5, skipMs: 10_000 };

/**
 * One upstream: its forwarder (a keep-alive pool), its requests in flight
 * and its passive health. Carried over a reload when its settings did not
 * change (generations.ts), so its connections, load and health survive.
 */
export class Upstream {
  /** Requests sent and not yet answered to their end. */
  inFlight = 0;
  /** Failures since the last success. */
  failures = 0;
  /** Skipped until this time (`now()` ms); 0 when never skipped. */
  skippedUntil = 0;
  readonly forwarder: Forwarder;

  constructor(
    readonly config: UpstreamConfig,
    readonly health: HealthOptions = DEFAULT_HEALTH,
    /** Told of each failure (the failures counter of /metrics). */
    readonly onFailure?: (name: string) => void,
  ) {
    this.forwarder = createForwarder(config);
  }

  get name(): string {
    return this.config.name;
  }

  /** Not skipped now. */
  get usable(): boolean {
    return this.skippedUntil <= (this.health.now ?? Date.now)();
  }

  /** An answer came (any status but 502/503/504): the failures in a row start over. */
  succeeded(): void {
    this.failures = 0;
  }

  /**
   * A failure before the first response byte. At the threshold the upstream
   * is skipped; once the skip is over it is used again, and a next failure
   * before any success skips it again at once.
   */
  failed(): void {
    this.failures++;
    this.onFailure?.(this.name);
    if (this.failures >= this.health.failures) this.skippedUntil = (this.health.now ?? Date.now)() + this.health.skipMs;
  }

  close(): Promise<void> {
    return this.forwarder.close();
  }
}

/** The upstreams of one config generation and how a model finds them. */
export interface Router {
  /** Every upstream, in config order. */
  readonly upstreams: readonly Upstream[];
  /** Set when there is one upstream serving every model and no alias: every request goes there. */
  readonly single: Upstream | undefined;
  /** `model_aliases`: the client's name -> the served name. */
  readonly aliases: Readonly<Record<string, string>>;
  /** The upstreams a request for `model` may go to, in config order; throws 404 `model_not_found` (or `route_not_found` without a model) when none. */
  candidates(model: string | undefined): readonly Upstream[];
  /** The upstream named `name` in this generation (a resource's owner), or undefined when a reload removed it. */
  named(name: string): Upstream | undefined;
}

/** Answers a model with no upstream: the same 404 as a model the policy hides. */
function noUpstream(model: string): NotFoundError {
  return new NotFoundError(`Model '${model}' not found. Use 'client.models.list()' to list available Models.`, "model_not_found");
}

/** Most models whose candidates are remembered; past it the cache starts over. */
const MAX_CACHED_MODELS = 10_000;

/** `llama-guard-*` as a regular expression: `*` any run of characters, `?` one; anything else literal. */
function globToRegExp(glob: string): RegExp {
  const source = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${source}$`, "s");
}

/** Builds the router over `upstreams` (already created, in config order). */
export function createRouter(upstreams: readonly Upstream[], aliases: Readonly<Record<string, string>>): Router {
  const compiled = upstreams.map((upstream) => {
    const patterns = upstream.config.models;
    return {
      upstream,
      exact: new Set(patterns.filter((p) => !/[*?]/.test(p))),
      globs: patterns.filter((p) => p !== "*" && /[*?]/.test(p)).map(globToRegExp),
      wildcard: patterns.includes("*"),
    };
  });
  const wildcard = compiled.filter((c) => c.wildcard).map((c) => c.upstream);
  const byName = new Map(upstreams.map((u) => [u.name, u]));
  const cache = new Map<string, readonly Upstream[]>();
  const only = upstreams.length === 1 && wildcard.length === 1 && Object.keys(aliases).length === 0 ? upstreams[0] : undefined;

  function match(model: string): readonly Upstream[] {
    const named = compiled.filter((c) => c.exact.has(model) || c.globs.some((g) => g.test(model))).map((c) => c.upstream);
    // `"*"` is the fallback: an upstream that names the model takes it from every `"*"` one.
    return named.length > 0 ? named : wildcard;
  }

  return {
    upstreams,
    single: only,
    aliases,
    candidates(model) {
      if (model === undefined) {
        if (wildcard.length === 0) throw new RouteNotFoundError();
        return wildcard.slice(0, 1);
      }
      let found = cache.get(model);
      if (found === undefined) {
        found = match(model);
        if (cache.size >= MAX_CACHED_MODELS) cache.clear();
        cache.set(model, found);
      }
      if (found.length === 0) throw noUpstream(model);
      return found;
    },
    named(name) {
      return byName.get(name);
    },
  };
}

/**
 * Picks the upstream to try: among `candidates` not in `tried`, a usable one
 * with the fewest requests in flight (ties to the earliest); when every one
 * left is skipped, the same among those (tried anyway). Undefined when none
 * is left.
 */
export function pickUpstream(candidates: readonly Upstream[], tried?: Upstream): Upstream | undefined {
  let best: Upstream | undefined;
  let bestSkipped: Upstream | undefined;
  for (const upstream of candidates) {
    if (upstream === tried) continue;
    if (upstream.usable) {
      if (!best || upstream.inFlight < best.inFlight) best = upstream;
    } else if (!bestSkipped || upstream.inFlight < bestSkipped.inFlight) bestSkipped = upstream;
  }
  return best ?? bestSkipped;
}

/** What `/ready` says of the upstreams: each by name, `ok` or `skipped`; ready unless a model pattern has no usable upstream. */
export interface UpstreamReadiness {
  readonly ready: boolean;
  readonly upstreams: Readonly<Record<string, "ok" | "skipped">>;
}

/**
 * The upstreams' readiness: ready while every configured model pattern has
 * at least one upstream listing it that is not skipped. Names are the
 * operator's own, never addresses: /ready is unauthenticated.
 */
export function upstreamReadiness(router: Router): UpstreamReadiness {
  const upstreams = Object.fromEntries(router.upstreams.map((u) => [u.name, u.usable ? "ok" : "skipped"] as const));
  const patterns = new Set(router.upstreams.flatMap((u) => u.config.models));
  const ready = [...patterns].every((pattern) => router.upstreams.some((u) => u.usable && u.config.models.includes(pattern)));
  return { ready, upstreams };
}

/**
 * The model a request is checked and forwarded as: an alias's target
 * (`model_aliases`), with the body field naming it (the first of `fields`
 * that holds `model`) rewritten to the target; unchanged when `model` is no
 * alias. The field is rewritten in a JSON object or, given the request's
 * `contentTypeHeader`, in a multipart form (an audio upload). An alias the
 * gateway cannot rewrite (another kind of body, or a form naming the field
 * more than once) is a 400: the upstream would be sent the alias's name, unchecked.
 */
export function servedModel(
  body: BufferedBody,
  fields: readonly string[],
  model: string,
  aliases: Readonly<Record<string, string>>,
  contentTypeHeader?: string,
): { body: BufferedBody; model: string } {
  const target = Object.hasOwn(aliases, model) ? aliases[model]! : undefined;
  if (target === undefined) return { body, model };
  const field = fields.find((name) => jsonMember(body, name) === model);
  let rewritten = field === undefined ? undefined : withJsonMemberScanned(body, field, target);
  if (rewritten === undefined && contentTypeHeader !== undefined) {
    for (const name of fields) if ((rewritten = withFormField(body, contentTypeHeader, name, target))) break;
  }
  if (rewritten === undefined || rewritten === body) {
    throw new BadRequestError(`The model alias '${model}' can only be rewritten in a JSON body or a multipart form naming it once: name the model '${target}'`, "invalid_request");
  }
  return { body: rewritten, model: target };
}
