import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ProviderObserver } from "../core/providers/types.js";

/**
 * The gateway's Prometheus metrics (GET /metrics, docs/operations.md).
 *
 * Every label has a bounded set of values: route groups come from a fixed
 * list, decisions and outcomes are enums, providers and caches are named by
 * the code. No principal, token, key id or raw path is ever a label: a label
 * per caller would grow without bound and leak who calls.
 */
export interface GatewayMetrics {
  readonly registry: Registry;
  /** One finished request. */
  request(group: string, status: number, decision: Decision, seconds: number): void;
  /** Time the authentication provider took (stage 3), success or not. */
  authentication(provider: string, outcome: "ok" | "refused" | "unavailable", seconds: number): void;
  /** Time to the upstream's response headers. */
  upstream(group: string, seconds: number): void;
  /** An upstream exchange that failed (502/504) or was cut. */
  upstreamError(kind: "unreachable" | "timeout" | "invalid"): void;
  /** A failure of the upstream named `upstream` before its first response byte (connect error, reset, timeout, 502/503/504). */
  upstreamFailure(upstream: string): void;
  /** Where `tollgate_upstream_healthy` reads the upstreams of the current generation from (1: used, 0: skipped). */
  watchUpstreams(read: () => readonly { readonly name: string; readonly usable: boolean }[]): void;
  /** A request the quota refused (429). */
  quotaRejected(): void;
  /** A quota store failure, and what was done about it (`refused` 503, or `admitted` when failing open). */
  quotaStoreError(outcome: string): void;
  /** LLM tokens read from a response's `usage`. */
  tokens(count: number): void;
  /** A request refused with 503 `overloaded`: its body would pass `server.max_buffered_bytes`. */
  overloaded(): void;
  /** Usage rows dropped: the record store failed for longer than the recorder holds rows (core/usage/recorder.ts). */
  usageDropped(rows: number): void;
  /** Spans not exported (`tracing`): the export queue was full, or the collector did not take them. */
  traceSpansDropped(reason: "queue_full" | "export_failed", spans: number): void;
  /** What the providers report: identity-service calls and cache lookups. */
  readonly providers: ProviderObserver;
}

/**
 * What became of a request: `allowed` (passed every stage), `public`
 * (a public path), `401`, `403`, `404-hidden` (a resource the caller may not
 * see), `429`, or `error` (refused for another reason: bad path, body too
 * large, identity service or quota store down, shutting down).
 */
export type Decision = "allowed" | "public" | "401" | "403" | "404-hidden" | "429" | "error";

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Creates the registry and every metric in it (with Node's default process metrics). */
export function createMetrics(): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const requests = new Counter({
    name: "tollgate_requests_total",
    help: "Requests answered, by route group, status and decision",
    labelNames: ["route", "status", "decision"] as const,
    registers,
  });
  const requestDuration = new Histogram({
    name: "tollgate_request_duration_seconds",
    help: "Time from a request's arrival to the end of its response (streams included), by route group",
    labelNames: ["route"] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const authDuration = new Histogram({
    name: "tollgate_authentication_duration_seconds",
    help: "Time the authentication provider took, by provider type and outcome",
    labelNames: ["provider", "outcome"] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const upstreamDuration = new Histogram({
    name: "tollgate_upstream_duration_seconds",
    help: "Time to the upstream's response headers, by route group",
    labelNames: ["route"] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const upstreamErrors = new Counter({
    name: "tollgate_upstream_errors_total",
    help: "Upstream exchanges that failed: unreachable (502), timeout (504), invalid answer (502)",
    labelNames: ["kind"] as const,
    registers,
  });
  const upstreamFailures = new Counter({
    name: "tollgate_upstream_failures_total",
    help: "Failures of an upstream before its first response byte (connect error, reset, timeout, 502/503/504), by upstream name",
    labelNames: ["upstream"] as const,
    registers,
  });
  let upstreamsNow: () => readonly { readonly name: string; readonly usable: boolean }[] = () => [];
  new Gauge({
    name: "tollgate_upstream_healthy",
    help: "1 when the upstream is used, 0 while it is skipped after failures in a row (passive health), by upstream name",
    labelNames: ["upstream"] as const,
    registers,
    // Across cluster workers: 0 when any worker skips it.
    aggregator: "min",
    collect() {
      this.reset();
      for (const { name, usable } of upstreamsNow()) this.labels(name).set(usable ? 1 : 0);
    },
  });
  const quotaRejections = new Counter({
    name: "tollgate_quota_rejections_total",
    help: "Requests refused by the quota (429)",
    registers,
  });
  const quotaStoreErrors = new Counter({
    name: "tollgate_quota_store_errors_total",
    help: "Quota store failures, by what was done: refused (503, failure_mode closed) or admitted (failure_mode open)",
    labelNames: ["outcome"] as const,
    registers,
  });
  /** Tokens counted since the last scrape: added to the counter when it is read, not on every answer (a call into prom-client per stream). */
  let tokensSinceScrape = 0;
  const tokens = new Counter({
    name: "tollgate_llm_tokens_total",
    help: "LLM tokens counted from responses' usage",
    registers,
    collect() {
      if (tokensSinceScrape > 0) this.inc(tokensSinceScrape);
      tokensSinceScrape = 0;
    },
  });
  const overloads = new Counter({
    name: "tollgate_overloaded_total",
    help: "Requests refused with 503 overloaded: the request bodies held in memory would pass server.max_buffered_bytes",
    registers,
  });
  const usageDrops = new Counter({
    name: "tollgate_usage_dropped_total",
    help: "Usage rows dropped because the record store did not take them in time (held in memory up to a bound, then dropped)",
    registers,
  });
  const traceDrops = new Counter({
    name: "tollgate_trace_spans_dropped_total",
    help: "Trace spans not exported, by reason: queue_full (more ended spans than the export queue holds) or export_failed (the collector did not take them)",
    labelNames: ["reason"] as const,
    registers,
  });
  const identityCalls = new Counter({
    name: "tollgate_identity_provider_requests_total",
    help: "Calls to identity services (JWKS, introspection, custom endpoint, GitHub, Kubernetes), by service",
    labelNames: ["service"] as const,
    registers,
  });
  const identityErrors = new Counter({
    name: "tollgate_identity_provider_errors_total",
    help: "Calls to identity services that got no usable answer (unreachable, timeout, 5xx, malformed), by service",
    labelNames: ["service"] as const,
    registers,
  });
  const cacheLookups = new Counter({
    name: "tollgate_cache_lookups_total",
    help: "Lookups in the providers' caches (verified tokens, introspection, API keys, ...), by cache and result (hit, miss)",
    labelNames: ["cache", "result"] as const,
    registers,
  });

  // Label children are looked up once per label set and kept: prom-client
  // hashes the label values on every labels() call, which shows in a profile
  // at tens of thousands of requests a second. The sets are bounded (see above).
  const requestCounter = memoized((key) => requests.labels(...(key.split(" ") as [string, string, string])));
  const requestHistogram = memoized((group) => requestDuration.labels(group));
  const upstreamHistogram = memoized((group) => upstreamDuration.labels(group));
  const authHistogram = memoized((key) => authDuration.labels(...(key.split(" ") as [string, string])));

  return {
    registry,
    request(group, status, decision, seconds) {
      requestCounter(`${group} ${statusLabel(status)} ${decision}`).inc();
      requestHistogram(group).observe(seconds);
    },
    authentication(provider, outcome, seconds) {
      authHistogram(`${provider} ${outcome}`).observe(seconds);
    },
    upstream(group, seconds) {
      upstreamHistogram(group).observe(seconds);
    },
    upstreamError(kind) {
      upstreamErrors.labels(kind).inc();
    },
    quotaRejected() {
      quotaRejections.inc();
    },
    quotaStoreError(outcome) {
      quotaStoreErrors.labels(outcome).inc();
    },
    tokens(count) {
      if (count > 0) tokensSinceScrape += count;
    },
    usageDropped(rows) {
      usageDrops.inc(rows);
    },
    upstreamFailure(upstream) {
      upstreamFailures.labels(upstream).inc();
    },
    watchUpstreams(read) {
      upstreamsNow = read;
    },
    overloaded() {
      overloads.inc();
    },
    traceSpansDropped(reason, spans) {
      traceDrops.labels(reason).inc(spans);
    },
    providers: {
      identityCall(service, ok) {
        identityCalls.labels(service).inc();
        if (!ok) identityErrors.labels(service).inc();
      },
      cacheLookup(cache, hit) {
        cacheLookups.labels(cache, hit ? "hit" : "miss").inc();
      },
    },
  };
}

/**
 * `make(key)`, computed once per key and kept. Keys are label values joined
 * by a space (none of ours contains one).
 */
function memoized<T>(make: (key: string) => T): (key: string) => T {
  const made = new Map<string, T>();
  return (key) => {
    let value = made.get(key);
    if (value === undefined) made.set(key, (value = make(key)));
    return value;
  };
}

/** Status codes outside 100–599 (none should occur) are folded into one label value. */
function statusLabel(status: number): string {
  return status >= 100 && status <= 599 ? String(status) : "other";
}

/**
 * Path segments that name a route group; anything else is `other`. The list
 * is fixed so that a client inventing paths cannot grow the label set.
 */
const ROUTE_GROUPS = new Set([
  "chat",
  "completions",
  "embeddings",
  "responses",
  "conversations",
  "models",
  "files",
  "vector_stores",
  "vector-io",
  "vector_io",
  "batches",
  "fine_tuning",
  "images",
  "audio",
  "moderations",
  "assistants",
  "threads",
  "uploads",
  "inference",
  "agents",
  "safety",
  "shields",
  "tools",
  "tool-runtime",
  "toolgroups",
  "scoring",
  "eval",
  "datasets",
  "telemetry",
  "providers",
  "inspect",
  "health",
  "version",
  "ready",
  "metrics",
]);

/** Version prefixes skipped before the group segment: /v1, /v1alpha, /v2beta, ... */
const VERSION_SEGMENT = /^v\d+(?:alpha|beta)?\d*$/;

/**
 * The route group of a canonical path: its first segment after an API
 * version (`/v1/chat/completions` → `chat`), from a fixed list, else `other`.
 */
export function routeGroup(path: string | undefined): string {
  if (path === undefined) return "other";
  let start = 1;
  let end = path.indexOf("/", start);
  let segment = end === -1 ? path.slice(start) : path.slice(start, end);
  if (VERSION_SEGMENT.test(segment) && end !== -1) {
    start = end + 1;
    end = path.indexOf("/", start);
    segment = end === -1 ? path.slice(start) : path.slice(start, end);
  }
  return ROUTE_GROUPS.has(segment) ? segment : "other";
}
