import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type RequestListener, type Server as HttpServer, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { Registry } from "prom-client";
import { closeAll, errorMessage } from "../core/carry-over.js";
import type { Config } from "../core/config/schema.js";
import { ConfigError, MethodNotAllowedError, RouteNotFoundError, ShuttingDownError, UnsupportedMediaTypeError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { toLazyPipelineRequest, toPipelineRequest } from "../core/node-request.js";
import type { AuthProvider } from "../core/providers/types.js";
import { resilientRecordStore } from "../core/stores/resilient.js";
import type { RecordStore } from "../core/stores/types.js";
import { reservedTarget } from "../admin/api.js";
import { checkDeclaredLength } from "./request-body.js";
import { createBufferBudget } from "./buffer-budget.js";
import { startGenerations, type Generations } from "./generations.js";
import { checkRequestHeaders } from "./headers.js";
import { createMetrics } from "./metrics.js";
import { createMetricsServer, createOwnEndpoints, FORWARDED_METHODS } from "./own-endpoints.js";
import { createProxy } from "./proxy.js";
import { createUsageRecorder } from "../core/usage/recorder.js";
import { createRequests, type ShutdownState } from "./requests.js";
import type { HealthOptions } from "./upstreams.js";
import { writeClientError } from "./respond.js";


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
  /** When an upstream is skipped and for how long (upstreams.ts): 5 failures in a row, 10 s. Not a config key; tests shorten it. */
  upstreamHealth?: HealthOptions | undefined;
}

export interface Gateway {
  /** The node:http (node:https with `server.tls`) server; for tests and embedding. */
  readonly server: HttpServer | HttpsServer;
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
  // Usage of every forwarded request, written to the record store in batches (core/usage/recorder.ts).
  const usage = store && startConfig.usage.enabled ? createUsageRecorder({ store, log: options.log, onDropped: (rows) => metrics.usageDropped(rows) }) : undefined;
  const renderMetrics = options.renderMetrics ?? (() => metrics.registry.metrics());
  const metricsOptions = { metrics: startConfig.metrics, renderMetrics, metricsContentType: metrics.registry.contentType, log };
  const own = createOwnEndpoints(metricsOptions);

  const generations = await startGenerations({
    config: startConfig,
    log: options.log,
    store,
    provider: options.provider,
    own,
    health: options.upstreamHealth,
    onUpstreamFailure: (name) => metrics.upstreamFailure(name),
    source,
    observers: {
      provider: metrics.providers,
      onAuthenticated: (providerType, outcome, seconds) => metrics.authentication(providerType, outcome, seconds),
      onProviderError: (err) => log.warn({ err: errorMessage(err) }, "authentication provider failed"),
      onQuotaStoreError: (outcome) => metrics.quotaStoreError(outcome),
    },
    onSpansDropped: (reason, spans) => metrics.traceSpansDropped(reason, spans),
  }).catch(async (err: unknown) => {
    // The gateway owns what it was given: nothing of it outlives a failed start.
    await closeAll([usage, options.provider, store], options.log);
    throw err;
  });
  // tollgate_upstream_healthy shows the upstreams of the generation new requests start on.
  metrics.watchUpstreams(() => generations.current.router.upstreams);
  // One budget for the process: every request's buffered body counts against it, whichever generation serves it.
  const bodyBudget = createBufferBudget(() => generations.current.config.server.max_buffered_bytes, () => metrics.overloaded());

  let closing = false;
  let closed: Promise<void> | undefined;
  let metricsServer: HttpServer | undefined;
  const proto = startConfig.server.tls ? "https" : "http";
  const shutdownState: ShutdownState = {
    get closing() {
      return closing;
    },
    closeIdleConnections: () => server.closeIdleConnections(),
  };
  const requests = createRequests({ generations, metrics, log, bodyBudget, shutdown: shutdownState });
  const proxy = createProxy({ own, metrics, log, proto, shutdown: shutdownState, usage });

  /**
   * Every request, in order: its state and log line (requests.ts), stages
   * 1–5 (core/pipeline.ts), then stages 6–7 or an own endpoint (proxy.ts).
   * Any error becomes the OpenAI envelope in one place (requests.ts).
   */
  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const state = requests.track(req, res);
    try {
      if (closing) throw new ShuttingDownError();
      const { config, pipeline } = state.generation;
      // Before anything reads a header: a field past the count or a second Host is refused, never dropped or guessed.
      checkRequestHeaders(req.rawHeaders, config.server.max_header_count);
      checkDeclaredLength(req.headers, config.server.max_body_bytes);
      // The admin API and the console answer here, never forwarded: authentication and the admin condition only (src/admin).
      const reserved = reservedTarget(req.url);
      if (reserved) {
        if (!state.generation.admin) throw new RouteNotFoundError();
        const answer = await state.generation.admin.handle({ ...toPipelineRequest(req, state.signal), raw: req, ...reserved });
        state.context = { ...reserved, public: answer.user === undefined, user: answer.user };
        const body = Buffer.isBuffer(answer.body) || typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body);
        res.writeHead(answer.status, answer.headers).end(req.method === "HEAD" ? undefined : body);
        return;
      }
      // Every copy of a repeated header (two Authorization headers, two identity
      // headers) reaches the pipeline, so that it refuses rather than guesses.
      state.context = await pipeline.authorize(toLazyPipelineRequest(req, state));
      const method = req.method ?? "";
      if (!FORWARDED_METHODS.includes(method)) throw new MethodNotAllowedError(method);
      // A Content-Type that does not parse is refused before its body is read (as Fastify did, RFC 9110 §8.3.1).
      if (BODY_METHODS.has(method) && !validContentType(req.headers["content-type"])) throw new UnsupportedMediaTypeError();
      await proxy.handle(req, res, state);
    } catch (err) {
      try {
        requests.sendError(req, res, state, err);
      } catch (failure) {
        // Not even an error answer could be written: cut the connection rather than leave it hanging.
        log.error({ err: errorMessage(failure) }, "unexpected error while answering an error");
        res.destroy();
      }
    }
  }

  let server: HttpServer | HttpsServer;
  try {
    server = createServer(startConfig, source, (req, res) => void serve(req, res));
  } catch (err) {
    await generations.close();
    await closeAll([usage, options.provider, store], options.log);
    throw err;
  }
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
    log.debug({ code: err.code }, "malformed request refused");
    writeClientError(err, socket);
  });

  return {
    server,
    metrics: metrics.registry,
    reload(config) {
      if (closing) return Promise.reject(new Error("the gateway is shutting down"));
      // The usage held so far is written at a reload (as at SIGTERM).
      return generations.reload(config).finally(() => usage?.flush());
    },
    async listen() {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(startConfig.server.port, startConfig.server.host, () => {
          server.off("error", reject);
          resolve();
        });
      });
      const metricsConfig = startConfig.metrics;
      if (metricsConfig.enabled && metricsConfig.port !== undefined) {
        metricsServer = createMetricsServer(metricsOptions);
        const server = metricsServer;
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(metricsConfig.port, metricsConfig.host ?? startConfig.server.host, () => {
            server.off("error", reject);
            resolve();
          });
        });
      }
      const address = server.address() as AddressInfo;
      const host = address.family === "IPv6" || address.address.includes(":") ? `[${address.address}]` : address.address;
      return { url: `${proto}://${host}:${address.port}` };
    },
    close() {
      closed ??= shutdown();
      return closed;
    },
  };

  async function shutdown(): Promise<void> {
    closing = true;
    const timeoutMs = generations.current.config.server.shutdown_timeout_ms;
    // After the grace period, whatever still runs is cut: its upstream request
    // is aborted when its client connection closes.
    const timer = setTimeout(() => {
      log.warn({ timeout_ms: timeoutMs }, "shutdown timeout: closing the remaining connections");
      server.closeAllConnections();
    }, timeoutMs);
    timer.unref();
    try {
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      // Stops accepting, closes idle keep-alive connections, and resolves once every open one has ended.
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
    } finally {
      clearTimeout(timer);
      await generations.close();
      // The usage of the requests just drained is written before the store closes.
      await closeAll([usage, options.provider, store], options.log);
    }
  }
}

/**
 * The node:http (or node:https) server, TLS included: a certificate or key
 * that cannot be read or used is a ConfigError naming the key. Its settings
 * are the ones the gateway ran with under Fastify: no request or connection
 * timeout (streams run long), 72 s keep-alive, every header field kept.
 */
function createServer(config: Config, source: string, listener: RequestListener): HttpServer | HttpsServer {
  const tls = config.server.tls;
  // Requests with long-running streams are the norm; Node's default timeouts stay off.
  const options = { requestTimeout: 0, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS };
  let server: HttpServer | HttpsServer;
  if (tls) {
    const cert = readTlsFile(tls.cert_file, "server.tls.cert_file", source);
    const key = readTlsFile(tls.key_file, "server.tls.key_file", source);
    try {
      server = createHttpsServer({ ...options, cert, key }, listener);
    } catch (err) {
      // A certificate or key that is readable but not valid PEM fails here.
      throw new ConfigError(source, [`server.tls: cannot use the certificate and key: ${(err as Error).message}`]);
    }
  } else {
    server = createHttpServer(options, listener);
  }
  server.setTimeout(0);
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  // Node keeps the first 2,000 header fields and silently drops the rest; the
  // gateway must see them all to refuse past `server.max_header_count` (431).
  // Their bytes stay bounded by Node's 16 KiB header limit.
  server.maxHeadersCount = 0;
  return server;
}

/** How long an idle keep-alive connection stays open (Fastify's default, which the gateway kept). */
const KEEP_ALIVE_TIMEOUT_MS = 72_000;

/** Methods whose Content-Type, when sent, must parse (as Fastify checked it). */
const BODY_METHODS = new Set(["DELETE", "OPTIONS", "PATCH", "PUT", "POST"]);

/** RFC 9110 token characters, a media type's type and subtype. */
const TYPE = /^[\w!#$%&'*+.^`|~-]+$/;
const SUBTYPE = TYPE;

/** Does a Content-Type header name a media type `type/subtype` (parameters not checked)? Absent counts as valid. */
function validContentType(header: string | undefined): boolean {
  if (header === undefined) return true;
  if (header === "" || header === "undefined") return false;
  const semicolon = header.indexOf(";");
  const mediaType = semicolon === -1 ? header : header.slice(0, semicolon);
  const slash = mediaType.indexOf("/");
  if (slash === -1) return false;
  return TYPE.test(mediaType.slice(0, slash).trimStart()) && SUBTYPE.test(mediaType.slice(slash + 1).trimEnd());
}

/** Reads a PEM file named at `configPath`, or fails naming that path. */
function readTlsFile(file: string, configPath: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(source, [`${configPath}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
}

