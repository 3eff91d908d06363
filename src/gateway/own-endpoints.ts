import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { errorMessage } from "../core/carry-over.js";
import type { Config } from "../core/config/schema.js";
import type { Logger } from "../core/log.js";
import { canonicalPath, canonicalTarget } from "../core/path.js";
import { routeMatchPath } from "../core/policy/routes.js";
import type { UpstreamReadiness } from "./upstreams.js";
import type { CheckResult } from "../core/readiness.js";
import { VERSION } from "../version.js";
import type { Catalog } from "./catalog.js";

/**
 * The gateway's own endpoints, answered by the gateway itself and never
 * forwarded: `/health` and `/version` (also under /v1, as in Llama Stack;
 * liveness checks no dependency), `/ready`, and `metrics.path` when the
 * metrics are served on the main port. /ready and /metrics skip
 * authentication: probes and scrapers carry no credential.
 */

/** Readiness probe path, answered by the gateway itself without authentication. */
export const READY_PATH = "/ready";

/**
 * Methods the gateway forwards. TRACE is left out on purpose: an upstream
 * that echoes a TRACE would show the client the `Authorization` the gateway
 * added (`upstream.api_key`). CONNECT is not a request to a resource.
 */
export const FORWARDED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

export type OwnEndpoint = "health" | "version" | "ready" | "metrics";

/** An answer of the gateway's own, for the host to send. */
export interface OwnAnswer {
  readonly status: number;
  readonly contentType?: string;
  /** An object is sent as JSON, a string as it is. */
  readonly body: string | Record<string, unknown>;
}

export interface OwnEndpoints {
  /** Paths that skip authentication because they are the gateway's own (/ready, /metrics on the main port). */
  readonly publicPaths: readonly string[];
  /** The own endpoint at this canonical path, if any. */
  which(path: string): OwnEndpoint | undefined;
  /**
   * Is `method` on `matchPath` a route this gateway serves: one of its own
   * endpoints, or a route the catalog declares? OPTIONS asks whether any
   * method is declared there.
   */
  declares(catalog: Catalog, method: string, matchPath: string): boolean;
  /** The `Allow` header of an OPTIONS answer at `path`. */
  allowed(config: Config, catalog: Catalog, own: OwnEndpoint | undefined, path: string): string;
  /**
   * Answers GET/HEAD on an own endpoint; `ping` runs the readiness checks;
   * `upstreams`, with several upstreams, says which are skipped now (upstreams.ts).
   */
  answer(own: OwnEndpoint, ping: () => Promise<CheckResult[]>, upstreams?: () => UpstreamReadiness): Promise<OwnAnswer>;
}

export interface OwnEndpointsOptions {
  /** `metrics` of the starting config (a reload does not move it). */
  readonly metrics: Config["metrics"];
  /** The text GET /metrics answers with. */
  readonly renderMetrics: () => Promise<string>;
  /** Its content type (Prometheus' text format). */
  readonly metricsContentType: string;
  readonly log: Logger;
}

export function createOwnEndpoints({ metrics, renderMetrics, metricsContentType, log }: OwnEndpointsOptions): OwnEndpoints {
  // /metrics on the main port, unless metrics.port moves it.
  const metricsOnMain = metrics.enabled && metrics.port === undefined ? canonicalPath(metrics.path) : undefined;

  function which(path: string): OwnEndpoint | undefined {
    if (path === "/health") return "health";
    if (path === "/version") return "version";
    if (path === READY_PATH) return "ready";
    if (path === metricsOnMain) return "metrics";
    return undefined;
  }

  return {
    publicPaths: metricsOnMain ? [READY_PATH, metricsOnMain] : [READY_PATH],
    which,
    declares(catalog, method, matchPath) {
      // Methods the gateway never forwards are answered 405 by the router, whatever the path.
      if (!FORWARDED_METHODS.includes(method)) return true;
      const own = which(matchPath);
      if (own === "ready" || own === "metrics") return true;
      if (own && (method === "GET" || method === "HEAD" || method === "OPTIONS")) return true;
      if (method === "OPTIONS") return catalog.methods(matchPath).length > 0;
      return catalog.match(method, matchPath, matchPath) !== undefined;
    },
    allowed(config, catalog, own, path) {
      const declared = own
        ? ["GET", "HEAD"]
        : config.server.resources.unlisted === "allow"
          ? FORWARDED_METHODS.filter((m) => m !== "OPTIONS")
          : catalog.methods(routeMatchPath(path));
      return [...declared, "OPTIONS"].join(", ");
    },
    async answer(own, ping, upstreams) {
      switch (own) {
        case "health":
          return { status: 200, body: { status: "OK" } };
        case "version":
          return { status: 200, body: { version: VERSION } };
        case "ready": {
          const readiness = readinessAnswer(await ping(), log, upstreams?.());
          return { status: readiness.ready ? 200 : 503, body: readiness.body };
        }
        case "metrics":
          return { status: 200, contentType: metricsContentType, body: await renderMetrics() };
      }
    },
  };
}

/**
 * GET /ready: the record store and the quota store answer, and the identity
 * provider answers now (each provider says how, with a short cache). The
 * body names a failing check with a fixed reason word, never an address or
 * a driver's message: /ready is unauthenticated. The log line has the detail.
 * With several upstreams, `upstreams` names each with `ok` or `skipped`
 * (passive health), and the check `upstreams` fails when some configured
 * model pattern has no usable upstream left.
 */
function readinessAnswer(results: readonly CheckResult[], log: Logger, upstreams?: UpstreamReadiness): { ready: boolean; body: Record<string, unknown> } {
  const failing: string[] = results.filter((result) => result.failure !== undefined).map(({ name }) => name);
  const checks: Record<string, string> = Object.fromEntries(results.map(({ name, failure }) => [name, failure?.reason ?? "ok"]));
  if (upstreams) {
    checks.upstreams = upstreams.ready ? "ok" : "unusable";
    if (!upstreams.ready) failing.push("upstreams");
  }
  const body: Record<string, unknown> = { status: failing.length === 0 ? "ready" : "not ready", checks };
  if (upstreams) body.upstreams = upstreams.upstreams;
  if (failing.length > 0) {
    body.failing = failing;
    const details = results.filter(({ failure }) => failure !== undefined).map(({ name, failure }) => [name, failure!.detail ?? failure!.reason]);
    if (upstreams && !upstreams.ready) details.push(["upstreams", `skipped: ${Object.keys(upstreams.upstreams).filter((name) => upstreams.upstreams[name] === "skipped").join(", ")}`]);
    log.warn({ failing: Object.fromEntries(details) }, "not ready");
  }
  return { ready: failing.length === 0, body };
}

/** Serves GET `metrics.path` on `metrics.port`, nothing else. */
export function createMetricsServer({ metrics, renderMetrics, metricsContentType, log }: OwnEndpointsOptions): HttpServer {
  const path = canonicalPath(metrics.path);
  return createHttpServer((req, res) => {
    if (safeCanonicalPath(req.url) !== path || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "content-type": "text/plain" }).end("Not found\n");
      return;
    }
    renderMetrics().then(
      (text) => res.writeHead(200, { "content-type": metricsContentType }).end(text),
      (err: unknown) => {
        log.warn({ err: errorMessage(err) }, "metrics rendering failed");
        res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n");
      },
    );
  });
}

/** The canonical path of a request target, or undefined when it has none (a 400). */
export function safeCanonicalPath(url: string | undefined): string | undefined {
  try {
    return canonicalTarget(url ?? "/").path;
  } catch {
    return undefined;
  }
}
