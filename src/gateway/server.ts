import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Registry } from "prom-client";
import fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Config } from "../core/config/schema.js";
import { AuthError, ConfigError, MethodNotAllowedError, NotFoundError, ShuttingDownError, TollgateError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { toPipelineRequest } from "../adapters/node.js";
import { createPipeline, type Pipeline, type RequestContext } from "../core/pipeline.js";
import { canonicalPath, canonicalTarget } from "../core/path.js";
import { createProvider } from "../core/providers/index.js";
import type { AuthProvider } from "../core/providers/types.js";
import { openQuotaStore, quotaFromConfig } from "../core/quota/from-config.js";
import type { Quota } from "../core/quota/quota.js";
import type { QuotaStore } from "../core/quota/store.js";
import { resilientRecordStore } from "../core/stores/resilient.js";
import type { RecordStore } from "../core/stores/types.js";
import { VERSION } from "../version.js";
import { checkDeclaredLength, hasBody, limitBody, lingerAfterResponse, type BodyLimits } from "./body.js";
import { createBufferBudget, type BufferHold } from "./buffer-budget.js";
import { createForwarder, discardBody, type Forwarder, type UpstreamResponse } from "./forward.js";
import { checkRequestHeaders, downstreamResponseHeaders, upstreamRequestHeaders } from "./headers.js";
import { maskedAnswer } from "./mask.js";
import { errorResponse, writeClientError } from "./respond.js";
import { createCatalog, type Catalog } from "./catalog.js";
import { policyOptions } from "../core/policy/from-config.js";
import { routeMatchPath } from "../core/policy/routes.js";
import { bodyStream, withBodyLength, type BufferedBody } from "./request-body.js";
import { drainSignal, meterUsage, prepareUsage, type UsagePlan } from "./usage.js";
import { createResourceGuard, type GuardedRequest, type ResourceGuard } from "./resources.js";
import { createMetrics, routeGroup, type Decision } from "./metrics.js";

/** What the gateway keeps about a request while it runs; typed on Fastify's request. */
export interface GatewayRequestState {
  /** Aborted when the client disconnects before its response is complete. */
  readonly abort: AbortController;
  /** `performance.now()` when the request arrived. */
  readonly start: number;
  /** What the pipeline established; undefined until it has let the request through. */
  context: RequestContext | undefined;
  /** The config generation serving this request from start to end (a reload does not switch it). */
  readonly runtime: Runtime;
  /** `X-Request-Id`: the client's when well-formed, else a new UUID; sent upstream and back. */
  readonly requestId: string;
  /** Set by the error path; otherwise derived from the context when the response closes. */
  decision: Decision | undefined;
  /** Milliseconds to the upstream's response headers, when it was asked. */
  upstreamMs: number | undefined;
  /** What this request's buffered body takes of `server.max_buffered_bytes`; given back when the handler is done. */
  readonly bodyHold: BufferHold;
}

/**
 * One generation of the config: everything a request needs, built together
 * and swapped at once by a reload. Requests keep the generation they started
 * with; a retired one is closed when its last request ends. Parts whose
 * config did not change (provider, quota store, upstream pool) are carried
 * over, so their caches and connections survive a reload.
 */
interface Runtime {
  readonly config: Config;
  readonly pipeline: Pipeline;
  readonly guard: ResourceGuard;
  /** The routes this generation forwards (`server.resources`). */
  readonly catalog: Catalog;
  readonly forwarder: Forwarder;
  readonly provider: AuthProvider | undefined;
  readonly quota: Quota | undefined;
  readonly quotaStore: QuotaStore | undefined;
  inFlight: number;
  retired: boolean;
  /** Its parts have been released (see `release` in createGateway); never twice. */
  released: boolean;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the gateway's `onRequest` hook before anything else runs. */
    gatewayState: GatewayRequestState | null;
  }
}

/** What {@link createGateway} is built from. */
export interface GatewayOptions {
  /** The validated configuration. */
  config: Config;
  log: Logger;
  /**
   * The authentication provider. Default: built from
   * `server.auth.provider_config` (none when `server.auth` is absent:
   * authentication off). The gateway owns it and closes it.
   */
  provider?: AuthProvider | undefined;
  /**
   * The record store (`api_key` needs it). Default: none. The gateway owns it
   * and closes it after the provider.
   */
  store?: RecordStore | undefined;
  /** Names the configuration in start-up errors (the config file's path). */
  source?: string | undefined;
  /**
   * Renders the text GET /metrics answers with. Default: this process's
   * registry ({@link Gateway.metrics}). A cluster worker passes one that asks
   * its supervisor for every worker's metrics, aggregated.
   */
  renderMetrics?: (() => Promise<string>) | undefined;
}

export interface Gateway {
  /** The Fastify instance (routes, hooks); for tests and embedding. */
  readonly server: FastifyInstance;
  /** This process's Prometheus registry (what GET /metrics shows, unless `renderMetrics` says otherwise). */
  readonly metrics: Registry;
  /** Starts listening on `server.host`:`server.port` (and `metrics.port`); resolves with the base URL. */
  listen(): Promise<{ url: string }>;
  /**
   * Applies a new validated config: providers, policies, limits, resources
   * and upstream are swapped at once for new requests; requests in flight
   * finish on the ones they started with, which are closed afterwards.
   * Quota counters live in the quota store and carry over. Settings that
   * need a new listener (host, port, TLS, workers, metrics, storage,
   * logging) are logged as needing a restart and keep their running values.
   * Rejects (and changes nothing) when the new config cannot be built.
   */
  reload(config: Config): Promise<void>;
  /**
   * Graceful shutdown: stops accepting connections, answers new requests on
   * open connections with 503 `shutting_down`, lets in-flight requests
   * (streams included) finish for up to `server.shutdown_timeout_ms`, cuts
   * the rest, then closes the upstream pool, the provider and the store.
   * Idempotent.
   */
  close(): Promise<void>;
}

/**
 * Methods the gateway forwards. TRACE is left out on purpose: an upstream
 * that echoes a TRACE would show the client the `Authorization` the gateway
 * added (`upstream.api_key`). CONNECT is not a request to a resource.
 */
const FORWARDED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/** Reads a PEM file named at `configPath`, or fails naming that path. */
function readTlsFile(file: string, configPath: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(source, [`${configPath}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
}

/**
 * Builds the gateway of DESIGN.md: Fastify in front, the pipeline
 * (stages 1–3) in an `onRequest` hook, and one catch-all route that forwards
 * to `upstream.url` with undici, bodies streamed both ways. Errors become the
 * OpenAI envelope in one place (`respond.ts`). Nothing listens until
 * {@link Gateway.listen}.
 *
 * @example
 * const gateway = await createGateway({ config: loadConfig("tollgate.yaml"), log: createLogger() });
 * const { url } = await gateway.listen();
 * process.once("SIGTERM", () => void gateway.close());
 */
export async function createGateway(options: GatewayOptions): Promise<Gateway> {
  const { source = "config" } = options;
  const startConfig = options.config;
  const log = options.log.child({ component: "gateway" });
  // Every call bounded, failures a 503, owners that could not be written held until they are (stores/resilient.ts).
  const store = options.store ? resilientRecordStore(options.store, { log: options.log }) : undefined;
  const metrics = createMetrics();
  // One budget for the process: every request's buffered body counts against it, whichever generation serves it.
  const bodyBudget = createBufferBudget(() => current.config.server.max_buffered_bytes, () => metrics.overloaded());
  const renderMetrics = options.renderMetrics ?? (() => metrics.registry.metrics());
  const metricsConfig = startConfig.metrics;
  // /metrics on the main port (unless metrics.port moves it) and /ready skip
  // authentication: probes and scrapers carry no credential.
  const metricsOnMain = metricsConfig.enabled && metricsConfig.port === undefined ? canonicalPath(metricsConfig.path) : undefined;
  const gatewayPaths = metricsOnMain ? [READY_PATH, metricsOnMain] : [READY_PATH];

  /**
   * Builds a generation from `config`, carrying over from `previous` the
   * parts whose config is unchanged. On failure, closes what it opened and
   * rethrows; `previous` is untouched.
   */
  async function buildRuntime(config: Config, previous?: Runtime): Promise<Runtime> {
    const opened: { close(): Promise<void> }[] = [];
    try {
      const providerConfig = config.server.auth?.provider_config;
      const provider =
        options.provider ??
        (previous && sameJson(previous.config.server.auth?.provider_config, providerConfig)
          ? previous.provider
          : providerConfig
            ? track(createProvider(providerConfig, { store, log: options.log, observer: metrics.providers }))
            : undefined);
      const quotaConfig = config.server.quota;
      let quotaStore: QuotaStore | undefined;
      if (quotaConfig) {
        quotaStore =
          previous?.quotaStore && sameJson(previous.config.server.quota?.kvstore, quotaConfig.kvstore)
            ? previous.quotaStore
            : track(await openQuotaStore(quotaConfig.kvstore, options.log.child({ component: "quota" })));
      }
      // Stage 5: the counters live in the store, so new limits apply to the counts already made.
      const quota = quotaConfig
        ? await quotaFromConfig(quotaConfig, { log: options.log, store: quotaStore, onStoreError: (outcome) => metrics.quotaStoreError(outcome) })
        : undefined;
      const providerType = providerConfig?.type ?? "none";
      const catalog = createCatalog(config.server.resources);
      const pipeline = createPipeline({
        quota,
        publicPaths: [...config.server.public_paths, ...gatewayPaths],
        provider,
        onProviderError: (err) => log.warn({ err: errorMessage(err) }, "authentication provider failed"),
        onAuthenticated: (outcome, seconds) => metrics.authentication(providerType, outcome, seconds),
        // Stage 4 (route_policy, required_scopes); stage 6's decisions come through guard below. Audit: one line per decision.
        ...policyOptions(config.server.auth, options.log.child({ component: "audit" })),
        // Only declared routes are forwarded (unless `unlisted: allow`); the gateway's own endpoints are its own.
        declared: config.server.resources.unlisted === "deny" ? (method, matchPath) => isDeclared(catalog, method, matchPath) : undefined,
      });
      const guard = createResourceGuard({
        pipeline,
        catalog,
        store,
        log: options.log.child({ component: "resources" }),
      });
      const forwarder = previous && sameJson(previous.config.upstream, config.upstream) ? previous.forwarder : track(createForwarder(config.upstream));
      const runtime: Runtime = { config, pipeline, guard, catalog, forwarder, provider, quota, quotaStore, inFlight: 0, retired: false, released: false };
      hold(runtime);
      return runtime;
    } catch (err) {
      await closeAll(opened.reverse());
      throw err;
    }

    function track<T extends { close(): Promise<void> }>(resource: T): T {
      opened.push(resource);
      return resource;
    }
  }

  /*
   * A part (upstream pool, quota store, provider) may serve several
   * generations at once: the current one and retired ones still finishing
   * requests. Each is counted by the generations holding it and closed when
   * the last of them is released, never while one still runs.
   */
  const holders = new Map<{ close(): Promise<void> }, number>();
  const releases = new Set<Promise<void>>();

  function partsOf(runtime: Runtime): { close(): Promise<void> }[] {
    const parts: { close(): Promise<void> }[] = [runtime.forwarder];
    if (runtime.quotaStore) parts.push(runtime.quotaStore);
    // A provider given by the caller belongs to the gateway as a whole (closed at shutdown).
    if (runtime.provider && runtime.provider !== options.provider) parts.push(runtime.provider);
    return parts;
  }

  function hold(runtime: Runtime): void {
    for (const part of partsOf(runtime)) holders.set(part, (holders.get(part) ?? 0) + 1);
  }

  /** Lets go of a generation's parts, closing those no other generation holds. */
  function release(runtime: Runtime): Promise<void> {
    if (runtime.released) return Promise.resolve();
    runtime.released = true;
    const unused: { close(): Promise<void> }[] = [];
    for (const part of partsOf(runtime)) {
      const count = (holders.get(part) ?? 1) - 1;
      if (count > 0) holders.set(part, count);
      else {
        holders.delete(part);
        unused.push(part);
      }
    }
    const done = closeAll(unused);
    releases.add(done);
    void done.finally(() => releases.delete(done));
    return done;
  }

  let current = await buildRuntime(startConfig).catch(async (err: unknown) => {
    // The gateway owns what it was given: nothing of it outlives a failed start.
    await closeAll([options.provider, store].filter((r) => r !== undefined));
    throw err;
  });
  let app: FastifyInstance;
  try {
    const tls = startConfig.server.tls;
    const https = tls
      ? {
          cert: readTlsFile(tls.cert_file, "server.tls.cert_file", source),
          key: readTlsFile(tls.key_file, "server.tls.key_file", source),
        }
      : null;
    try {
      app = fastify({
        ...(https ? { https } : {}),
        logger: false,
        // Bodies are streamed to the upstream untouched; max_body_bytes governs (see body.ts).
        bodyLimit: Number.MAX_SAFE_INTEGER,
        // The gateway answers 503 in its own envelope (onRequest below), not Fastify's.
        return503OnClosing: false,
        // Requests with long-running streams are the norm; Node's default timeouts stay off.
        requestTimeout: 0,
        routerOptions: { maxParamLength: 65_536 },
        clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
          log.debug({ code: err.code }, "malformed request refused");
          writeClientError(err, socket);
        },
        frameworkErrors: (err, request, reply) => {
          trackRequest(request, reply);
          sendError(request, reply, err);
        },
      }) as unknown as FastifyInstance;
    } catch (err) {
      if (!https) throw err;
      // A certificate or key that is readable but not valid PEM fails here.
      throw new ConfigError(source, [`server.tls: cannot use the certificate and key: ${(err as Error).message}`]);
    }
  } catch (err) {
    await release(current);
    await closeAll([options.provider, store].filter((r) => r !== undefined));
    throw err;
  }

  let closing = false;
  let closed: Promise<void> | undefined;
  let metricsServer: HttpServer | undefined;
  const proto = startConfig.server.tls ? "https" : "http";

  /** Starts the request's state and its single log line (written when the response closes). */
  function trackRequest(request: FastifyRequest, reply: FastifyReply): GatewayRequestState {
    if (request.gatewayState) return request.gatewayState;
    const runtime = current;
    runtime.inFlight++;
    const state: GatewayRequestState = {
      abort: new AbortController(),
      start: performance.now(),
      context: undefined,
      runtime,
      requestId: requestIdOf(request.raw.headers["x-request-id"]),
      decision: undefined,
      upstreamMs: undefined,
      bodyHold: bodyBudget.forRequest(),
    };
    request.gatewayState = state;
    const res = reply.raw;
    res.setHeader("x-request-id", state.requestId);
    res.once("close", () => {
      const aborted = !res.writableFinished;
      if (aborted) state.abort.abort(new Error("client disconnected"));
      const context = state.context;
      const decision = state.decision ?? (context ? (context.public ? "public" : "allowed") : "error");
      const seconds = (performance.now() - state.start) / 1000;
      // A refused request has no context: its group comes from the path it asked for.
      metrics.request(routeGroup(context?.path ?? safeCanonicalPath(request.raw.url)), res.statusCode, decision, seconds);
      // Method, canonical path, status, latency, principal: never the query or a header value.
      log.info(
        {
          reqId: state.requestId,
          method: request.raw.method,
          path: loggedPath(context?.path),
          status: res.statusCode,
          decision,
          ms: Math.round(seconds * 10_000) / 10,
          ...(state.upstreamMs !== undefined ? { upstream_ms: Math.round(state.upstreamMs * 10) / 10 } : {}),
          principal: context?.user?.principal,
          ...(aborted ? { aborted: true } : {}),
        },
        "request",
      );
      state.bodyHold.release();
      runtime.inFlight--;
      if (runtime.retired && runtime.inFlight === 0) void release(runtime);
      // A keep-alive connection that just went idle must not hold the shutdown up.
      if (closing) setImmediate(() => app.server.closeIdleConnections());
    });
    return state;
  }

  /** How much of this request's body the gateway takes, and how long it waits for it. */
  function bodyLimits(config: Config, state: GatewayRequestState): BodyLimits {
    return {
      maxBytes: config.server.max_body_bytes,
      idleMs: config.server.body_idle_timeout_ms,
      reserve: (bytes) => state.bodyHold.reserve(bytes),
    };
  }

  /** Every error the gateway answers goes through here. */
  function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): void {
    const { status, headers: errorHeaders, body } = errorResponse(err, request.raw.url);
    const state = request.gatewayState;
    if (state && state.decision === undefined) {
      state.decision = decisionOf(err, status, state);
      if (state.decision === "429") metrics.quotaRejected();
      if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) metrics.upstreamError(err instanceof UpstreamTimeoutError ? "timeout" : "unreachable");
    }
    // The client gets the reference's short message; what exactly was wrong is logged (never the credential).
    if (err instanceof AuthError && err.detail !== undefined) log.info({ reqId: state?.requestId, detail: err.detail }, "credential refused");
    // A request that passed the quota and failed later still tells the client where it stands.
    const headers = { ...state?.context?.responseHeaders, ...errorHeaders };
    if (status >= 500 && !(err instanceof TollgateError) && !hasCode(err, "FST_")) {
      log.error({ err: errorMessage(err) }, "unexpected error");
    }
    if (reply.sent || reply.raw.headersSent) {
      // Too late for a status: the only honest signal left is a cut connection.
      reply.raw.destroy();
      return;
    }
    // An unread request body would otherwise be drained after the response:
    // close instead, lingering so that the client still sending it reads this answer.
    if (!request.raw.complete) {
      headers.connection = "close";
      lingerAfterResponse(request.raw, request.raw.socket);
    }
    if (closing) headers.connection = "close";
    void reply.code(status).headers(headers).send(body);
  }

  /** What the request log and metrics call a refusal (see {@link Decision}). */
  function decisionOf(err: unknown, status: number, state: GatewayRequestState): Decision {
    // The pipeline let it through; the upstream failed (its own counter, upstreamError).
    if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) return "allowed";
    switch (status) {
      case 401:
        return "401";
      case 403:
        return "403";
      case 429:
        return "429";
      case 404:
        // After the pipeline let a user through, a 404 of ours is stage 6 hiding a resource.
        return state.context?.user ? "404-hidden" : "error";
      default:
        return "error";
    }
  }

  app.decorateRequest("gatewayState", null);
  // Node keeps the first 2,000 header fields and silently drops the rest; the
  // gateway must see them all to refuse past `server.max_header_count` (431).
  // Their bytes stay bounded by Node's 16 KiB header limit.
  app.server.maxHeadersCount = 0;

  // Bodies are not parsed: the stream goes upstream as it arrives (see the route).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", (_request, _payload, done) => done(null));

  app.setErrorHandler((err, request, reply) => sendError(request, reply, err));
  app.setNotFoundHandler((request, reply) => {
    trackRequest(request, reply);
    const method = request.raw.method ?? "";
    const err = FORWARDED_METHODS.includes(method)
      ? new NotFoundError()
      : new MethodNotAllowedError(method);
    sendError(request, reply, err);
  });

  app.addHook("onRequest", async (request, reply) => {
    const state = trackRequest(request, reply);
    if (closing) throw new ShuttingDownError();
    const raw = request.raw;
    // Before anything reads a header: a field past the count or a second Host is refused, never dropped or guessed.
    checkRequestHeaders(raw.rawHeaders, state.runtime.config.server.max_header_count);
    checkDeclaredLength(raw.headers, state.runtime.config.server.max_body_bytes);
    // Every copy of a repeated header (two Authorization headers, two identity
    // headers) reaches the pipeline, so that it refuses rather than guesses.
    state.context = await state.runtime.pipeline.authorize(toPipelineRequest(raw, state.abort.signal));
  });

  app.route({
    method: FORWARDED_METHODS,
    url: "/*",
    handler: async (request, reply) => {
      const state = request.gatewayState!;
      const { runtime } = state;
      const context = state.context!;
      const raw = request.raw;
      const method = raw.method ?? "GET";
      const limits = bodyLimits(runtime.config, state);

      // Served by the gateway itself: liveness (no dependency check), version, readiness, metrics.
      const own = ownEndpoint(context.path);
      if (method === "OPTIONS") {
        // Answered here, never forwarded: what this route accepts, from the catalog. (CORS is not Tollgate's.)
        if (context.responseHeaders) void reply.headers(context.responseHeaders);
        return reply.code(204).header("allow", allowedMethods(runtime, own, context.path)).send();
      }
      if (own) {
        if (method !== "GET" && method !== "HEAD") {
          // Readiness and metrics are the gateway's own; they are never forwarded.
          if (own === "ready" || own === "metrics") throw new MethodNotAllowedError(method);
        } else {
          if (context.responseHeaders) void reply.headers(context.responseHeaders);
          if (own === "health") return reply.send({ status: "OK" });
          if (own === "version") return reply.send({ version: VERSION });
          if (own === "ready") {
            const readiness = await checkReadiness(runtime);
            return reply.code(readiness.ready ? 200 : 503).send(readiness.body);
          }
          return reply.type(metrics.registry.contentType).send(await renderMetrics());
        }
      }

      // Stage 6: the resource policy for what the catalog knows (resources.ts); authentication off: nothing to check.
      const guard = runtime.guard;
      const guarded = context.user ? await guard.before(raw, context, limits) : undefined;
      // Token budgets (stage 5): a streamed completion is asked to report usage (usage.ts);
      // the answer must be readable, so it is asked for uncompressed.
      const usage = context.recordTokens && method === "POST" ? await prepareUsage(raw, context.path, guarded?.body, limits) : undefined;
      const forwardAs = usage
        ? ({ ...guarded, body: usage.body ?? guarded?.body, inspectResponse: true } as GuardedRequest)
        : guarded;
      const asked = performance.now();
      // An inference answer is read for its usage even after the client left (usage.ts): its upstream request outlives the client, within bounds.
      const signal = usage?.estimate ? drainSignal(state.abort.signal) : state.abort.signal;
      const answer = await forward(raw, context, state, forwardAs, false, signal).catch((err: unknown) => {
        if (state.abort.signal.aborted) return undefined;
        if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) {
          log.warn({ reqId: state.requestId, status: err.status, err: errorMessage(err.cause ?? err) }, "upstream request failed");
        }
        throw err;
      });
      if (!answer) {
        // The client is gone; there is nobody to answer.
        reply.hijack();
        reply.raw.destroy();
        return reply;
      }
      state.upstreamMs = performance.now() - asked;
      metrics.upstream(routeGroup(context.path), state.upstreamMs / 1000);
      const upstream = guarded
        ? await guard.after(guarded, context, answer, (query) => forward(raw, { ...context, query }, state, guarded, true))
        : answer;
      const relayed = relay(reply, upstream, usage);
      // The buffered body has been sent: its memory no longer counts, however long the answer streams.
      state.bodyHold.release();
      return relayed;
    },
  });

  /**
   * The gateway's own endpoints, by canonical path: `/health` and `/version`
   * (also under /v1, as in Llama Stack), `/ready`, and /metrics when served
   * on the main port.
   */
  function ownEndpoint(path: string): "health" | "version" | "ready" | "metrics" | undefined {
    if (path === "/health") return "health";
    if (path === "/version") return "version";
    if (path === READY_PATH) return "ready";
    if (path === metricsOnMain) return "metrics";
    return undefined;
  }

  /**
   * Is `method` on `matchPath` a route this gateway serves: one of its own
   * endpoints, or a route the catalog declares? OPTIONS asks whether any
   * method is declared there.
   */
  function isDeclared(catalog: Catalog, method: string, matchPath: string): boolean {
    // Methods the gateway never forwards are answered 405 by the router, whatever the path.
    if (!FORWARDED_METHODS.includes(method)) return true;
    const own = ownEndpoint(matchPath);
    if (own === "ready" || own === "metrics") return true;
    if (own && (method === "GET" || method === "HEAD" || method === "OPTIONS")) return true;
    if (method === "OPTIONS") return catalog.methods(matchPath).length > 0;
    return catalog.match(method, matchPath, matchPath) !== undefined;
  }

  /** The `Allow` header of an OPTIONS answer. */
  function allowedMethods(runtime: Runtime, own: string | undefined, path: string): string {
    const declared = own ? ["GET", "HEAD"] : runtime.config.server.resources.unlisted === "allow" ? FORWARDED_METHODS.filter((m) => m !== "OPTIONS") : runtime.catalog.methods(routeMatchPath(path));
    return [...declared, "OPTIONS"].join(", ");
  }

  /**
   * GET /ready: the record store and the quota store answer, and the
   * identity provider answers now (each provider says how, with a short
   * cache). Each check is bounded in time. The body names a failing check
   * with a fixed reason word (`timeout`, `unreachable`, `http_503`, ...),
   * never an address or a driver's message: /ready is unauthenticated. The
   * log line has the detail.
   */
  async function checkReadiness(runtime: Runtime): Promise<{ ready: boolean; body: Record<string, unknown> }> {
    const checks: [string, () => Promise<string | undefined>][] = [];
    const { quota, provider } = runtime;
    if (store) checks.push(["record_store", async () => void (await store.ping())]);
    if (quota) checks.push(["quota_store", async () => void (await quota.ping())]);
    if (provider?.ready) checks.push(["identity_provider", () => provider.ready!()]);
    const results = await Promise.all(checks.map(async ([name, check]) => [name, await bounded(check)] as const));
    const failing = results.filter(([, result]) => result !== undefined);
    const body: Record<string, unknown> = {
      status: failing.length === 0 ? "ready" : "not ready",
      checks: Object.fromEntries(results.map(([name, result]) => [name, result?.reason ?? "ok"])),
    };
    if (failing.length > 0) {
      body.failing = failing.map(([name]) => name);
      log.warn({ failing: Object.fromEntries(failing.map(([name, result]) => [name, result!.detail ?? result!.reason])) }, "not ready");
    }
    return { ready: failing.length === 0, body };
  }

  /**
   * Sends the upstream's response on, bypassing Fastify's reply: the status
   * and headers leave as soon as they arrive (a client sees a stream start
   * before its first token), then every body chunk as it comes. If either
   * side fails mid-way, both are destroyed: the client's connection is
   * cut (its headers are gone, a status can no longer tell it) and the
   * upstream request is aborted.
   */
  function relay(reply: FastifyReply, upstream: UpstreamResponse, usage?: UsagePlan): FastifyReply {
    const res = reply.raw;
    const state = reply.request.gatewayState!;
    let headers = downstreamResponseHeaders(upstream.headers);
    let source = upstream.body;
    // An error answer may repeat the credential the gateway sent (mask.ts): never relay it.
    const apiKey = state.runtime.config.upstream.api_key;
    if (apiKey && upstream.status >= 400) {
      const masked = maskedAnswer(headers, upstream.body, apiKey);
      if (!masked) {
        discardBody(upstream.body);
        metrics.upstreamError("invalid");
        throw new UpstreamError();
      }
      ({ headers, body: source } = masked);
    }
    if (closing) headers.connection = "close";
    // Ours replace any RateLimit fields of the upstream's: the client's limits are the gateway's.
    const quotaHeaders = state.context?.responseHeaders;
    if (quotaHeaders) Object.assign(headers, quotaHeaders);
    headers["x-request-id"] = state.requestId;
    try {
      // One call: the status and every header are validated and stored together (sent with the first chunk).
      res.writeHead(upstream.status, headers);
    } catch {
      // A header value Node will not send: the upstream's answer is unusable.
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      res.setHeader("x-request-id", state.requestId);
      if (source !== upstream.body) discardBody(source);
      discardBody(upstream.body);
      metrics.upstreamError("invalid");
      throw new UpstreamError();
    }
    reply.hijack();
    if (headers["content-length"] === undefined) res.flushHeaders();
    // pipe() plus two listeners rather than stream.pipeline, which allocates an
    // AbortController and an AbortError per call: measurable at this rate.
    const recordTokens = state.context?.recordTokens;
    const body =
      usage && recordTokens && upstream.status >= 200 && upstream.status < 300
        ? meterUsage(source, {
            contentType: headerText(headers["content-type"]),
            // Two Content-Encoding fields name two codings: "gzip, br", which the meter does not read (the estimate is charged).
            contentEncoding: [headers["content-encoding"] ?? []].flat().join(", "),
            // A body of declared length cannot lose a chunk; SSE never declares one in practice.
            stripUsageChunk: usage.stripUsageChunk && headers["content-length"] === undefined,
            estimate: usage.estimate,
            record: (tokens) => {
              metrics.tokens(tokens);
              void recordTokens(tokens);
            },
          })
        : source;
    body.on("error", () => res.destroy());
    if (state.abort.signal.aborted) {
      // The client left while the upstream answered: a metered answer is still read for its usage.
      body.destroy();
      return reply;
    }
    res.once("close", () => {
      if (!body.readableEnded) body.destroy();
    });
    body.pipe(res);
    return reply;
  }

  /**
   * `guarded`: what stage 6 read (its buffered body is forwarded instead of
   * the stream; an answer it must inspect is asked for uncompressed).
   * `bodyless`: a follow-up GET for the next page of a filtered list.
   */
  function forward(raw: IncomingMessage, context: RequestContext, state: GatewayRequestState, guarded?: GuardedRequest, bodyless = false, signal = state.abort.signal) {
    const { config, forwarder } = state.runtime;
    let headers = upstreamRequestHeaders(raw.rawHeaders, {
      apiKey: config.upstream.api_key,
      principalHeader: config.upstream.principal_header,
      principal: context.user?.principal,
      requestId: state.requestId,
      forwarded: { remoteAddress: raw.socket.remoteAddress, proto, host: raw.headers.host },
    });
    if (guarded?.inspectResponse) headers = identityEncoding(headers);
    const buffered: BufferedBody | undefined = bodyless ? undefined : guarded?.body;
    if (buffered) headers = withBodyLength(headers, buffered.length);
    return forwarder.forward({
      method: raw.method ?? "GET",
      path: context.path,
      query: context.query,
      headers,
      body: bodyless ? null : buffered ? bodyStream(buffered) : hasBody(raw.headers) ? limitBody(raw, bodyLimits(config, state)) : null,
      signal,
    });
  }

  /** Serves GET `metrics.path` on `metrics.port`, nothing else. */
  function createMetricsServer(): HttpServer {
    const path = canonicalPath(metricsConfig.path);
    return createHttpServer((req, res) => {
      if (safeCanonicalPath(req.url) !== path || (req.method !== "GET" && req.method !== "HEAD")) {
        res.writeHead(404, { "content-type": "text/plain" }).end("Not found\n");
        return;
      }
      renderMetrics().then(
        (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
        (err: unknown) => {
          log.warn({ err: errorMessage(err) }, "metrics rendering failed");
          res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n");
        },
      );
    });
  }

  let reloading: Promise<void> = Promise.resolve();

  return {
    server: app,
    metrics: metrics.registry,
    reload(config) {
      // One reload at a time, in the order asked.
      const run = reloading.then(() => applyReload(config));
      reloading = run.catch(() => undefined);
      return run;
    },
    async listen() {
      await app.listen({ host: startConfig.server.host, port: startConfig.server.port });
      if (metricsConfig.enabled && metricsConfig.port !== undefined) {
        metricsServer = createMetricsServer();
        const server = metricsServer;
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(metricsConfig.port, metricsConfig.host ?? startConfig.server.host, () => {
            server.off("error", reject);
            resolve();
          });
        });
      }
      const address = app.server.address() as AddressInfo;
      const host = address.family === "IPv6" || address.address.includes(":") ? `[${address.address}]` : address.address;
      return { url: `${proto}://${host}:${address.port}` };
    },
    close() {
      closed ??= shutdown();
      return closed;
    },
  };

  async function applyReload(config: Config): Promise<void> {
    if (closing) throw new Error("the gateway is shutting down");
    const previous = current;
    const fixed = RESTART_KEYS.filter(([, read]) => !sameJson(read(previous.config), read(config))).map(([name]) => name);
    if (fixed.length > 0) log.warn({ keys: fixed }, "reload: these settings need a restart and keep their running values");
    // Settings bound to the listener or the store keep their running values.
    const effective: Config = {
      ...config,
      server: { ...config.server, host: previous.config.server.host, port: previous.config.server.port, tls: previous.config.server.tls, workers: previous.config.server.workers },
      storage: previous.config.storage,
      metrics: previous.config.metrics,
      logging: previous.config.logging,
    };
    const next = await buildRuntime(effective, previous);
    current = next;
    previous.retired = true;
    if (previous.inFlight === 0) await release(previous);
  }

  async function shutdown(): Promise<void> {
    closing = true;
    const timeoutMs = current.config.server.shutdown_timeout_ms;
    // After the grace period, whatever still runs is cut: its upstream request
    // is aborted when its client connection closes.
    const timer = setTimeout(() => {
      log.warn({ timeout_ms: timeoutMs }, "shutdown timeout: closing the remaining connections");
      app.server.closeAllConnections();
    }, timeoutMs);
    timer.unref();
    try {
      app.server.closeIdleConnections();
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      await app.close();
      await reloading;
    } finally {
      clearTimeout(timer);
      await release(current);
      // Generations retired by a reload whose last requests just ended.
      await Promise.all([...releases]);
      if (options.provider) await closeAll([options.provider]);
      if (store) await closeAll([store]);
    }
  }

  async function closeAll(resources: { close(): Promise<void> }[]): Promise<void> {
    for (const resource of resources) {
      try {
        await resource.close();
      } catch (err) {
        options.log.warn({ err: errorMessage(err) }, "error while closing");
      }
    }
  }
}

/** The canonical path of a request target, or undefined when it has none (a 400). */
function safeCanonicalPath(url: string | undefined): string | undefined {
  try {
    return canonicalTarget(url ?? "/").path;
  } catch {
    return undefined;
  }
}

/** Readiness probe path, answered by the gateway itself without authentication. */
export const READY_PATH = "/ready";

/** Settings a reload cannot change: they belong to the listener, the process or the record store. */
const RESTART_KEYS: [string, (config: Config) => unknown][] = [
  ["server.host", (c) => c.server.host],
  ["server.port", (c) => c.server.port],
  ["server.tls", (c) => c.server.tls],
  ["server.workers", (c) => c.server.workers],
  ["storage", (c) => c.storage],
  ["metrics", (c) => c.metrics],
  ["logging", (c) => c.logging],
];

/** Configs are plain JSON after validation: equal text, equal meaning. */
function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Longest time one readiness check may take before it counts as failed. */
const READY_CHECK_TIMEOUT_MS = 2_000;

/** A reason word fit for the unauthenticated /ready body: lower-case letters, digits, `_`. */
const READY_REASON = /^[a-z][a-z0-9_]{0,39}$/;

/** Transport error codes that all mean the same thing to an operator reading /ready. */
const UNREACHABLE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EPIPE"]);

/**
 * Runs a readiness check: `undefined` when it passed, else a fixed reason
 * word for the /ready body and, for the log only, the detail (an error's
 * code and first line, which may name a host or a file).
 */
async function bounded(check: () => Promise<string | undefined>): Promise<{ reason: string; detail?: string } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<{ reason: string }>((resolve) => {
    timer = setTimeout(() => resolve({ reason: "timeout" }), READY_CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([
      check().then(
        (reason) => (reason === undefined ? undefined : READY_REASON.test(reason) ? { reason } : { reason: "failed", detail: reason.slice(0, 200) }),
        (err: unknown) => ({ reason: readinessReason(err), detail: errorMessage(err).split("\n")[0]!.slice(0, 200) }),
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A failed check's reason word: `unreachable` for transport errors, the error's own code when it is a plain word, else `error`. */
function readinessReason(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return "error";
  if (UNREACHABLE_CODES.has(code)) return "unreachable";
  if (code === "ETIMEDOUT") return "timeout";
  const word = code.toLowerCase();
  return READY_REASON.test(word) ? word : "error";
}

/** A client's `X-Request-Id` is kept when it is short and plain; anything else is replaced, never echoed. */
const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

function requestIdOf(value: string | string[] | undefined): string {
  return typeof value === "string" && REQUEST_ID.test(value) ? value : randomUUID();
}

/** Request headers asking for an uncompressed answer: the gateway must read it (resources.ts). */
function identityEncoding(headers: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== "accept-encoding") out.push(headers[i]!, headers[i + 1]!);
  }
  out.push("accept-encoding", "identity");
  return out;
}

function headerText(value: string | string[] | number | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value === undefined ? undefined : String(value);
}

/** Longest path written to a log line; a request line can be far longer. */
const MAX_LOGGED_PATH = 512;

function loggedPath(path: string | undefined): string | undefined {
  return path === undefined || path.length <= MAX_LOGGED_PATH ? path : `${path.slice(0, MAX_LOGGED_PATH)}...`;
}

function hasCode(err: unknown, prefix: string): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith(prefix);
}

/** An error's message for a log line: never its properties, which may hold request data. */
function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
