import { readFileSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Registry } from "prom-client";
import fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { closeAll, errorMessage } from "../core/carry-over.js";
import type { Config } from "../core/config/schema.js";
import { ConfigError, MethodNotAllowedError, NotFoundError, ShuttingDownError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { toPipelineRequest } from "../core/node-request.js";
import type { AuthProvider } from "../core/providers/types.js";
import { resilientRecordStore } from "../core/stores/resilient.js";
import type { RecordStore } from "../core/stores/types.js";
import { checkDeclaredLength } from "./request-body.js";
import { createBufferBudget } from "./buffer-budget.js";
import { startGenerations, type Generations } from "./generations.js";
import { checkRequestHeaders } from "./headers.js";
import { createMetrics } from "./metrics.js";
import { createMetricsServer, createOwnEndpoints, FORWARDED_METHODS } from "./own-endpoints.js";
import { createProxy } from "./proxy.js";
import { createRequests, type ShutdownState } from "./requests.js";
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
  const renderMetrics = options.renderMetrics ?? (() => metrics.registry.metrics());
  const metricsOptions = { metrics: startConfig.metrics, renderMetrics, metricsContentType: metrics.registry.contentType, log };
  const own = createOwnEndpoints(metricsOptions);

  const generations = await startGenerations({
    config: startConfig,
    log: options.log,
    store,
    provider: options.provider,
    own,
    observers: {
      provider: metrics.providers,
      onAuthenticated: (providerType, outcome, seconds) => metrics.authentication(providerType, outcome, seconds),
      onProviderError: (err) => log.warn({ err: errorMessage(err) }, "authentication provider failed"),
      onQuotaStoreError: (outcome) => metrics.quotaStoreError(outcome),
    },
  }).catch(async (err: unknown) => {
    // The gateway owns what it was given: nothing of it outlives a failed start.
    await closeAll([options.provider, store], options.log);
    throw err;
  });
  // One budget for the process: every request's buffered body counts against it, whichever generation serves it.
  const bodyBudget = createBufferBudget(() => generations.current.config.server.max_buffered_bytes, () => metrics.overloaded());

  let app: FastifyInstance;
  try {
    app = createFastify(startConfig, source, log, (err, request, reply) => {
      requests.track(request, reply);
      requests.sendError(request, reply, err);
    });
  } catch (err) {
    await generations.close();
    await closeAll([options.provider, store], options.log);
    throw err;
  }

  let closing = false;
  let closed: Promise<void> | undefined;
  let metricsServer: HttpServer | undefined;
  const proto = startConfig.server.tls ? "https" : "http";
  const shutdownState: ShutdownState = {
    get closing() {
      return closing;
    },
    closeIdleConnections: () => app.server.closeIdleConnections(),
  };
  const requests = createRequests({ generations, metrics, log, bodyBudget, shutdown: shutdownState });
  const proxy = createProxy({ own, metrics, log, proto, shutdown: shutdownState });

  app.decorateRequest("gatewayState", null);
  // Node keeps the first 2,000 header fields and silently drops the rest; the
  // gateway must see them all to refuse past `server.max_header_count` (431).
  // Their bytes stay bounded by Node's 16 KiB header limit.
  app.server.maxHeadersCount = 0;

  // Bodies are not parsed: the stream goes upstream as it arrives (see the route).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", (_request, _payload, done) => done(null));

  app.setErrorHandler((err, request, reply) => requests.sendError(request, reply, err));
  app.setNotFoundHandler((request, reply) => {
    requests.track(request, reply);
    const method = request.raw.method ?? "";
    const err = FORWARDED_METHODS.includes(method) ? new NotFoundError() : new MethodNotAllowedError(method);
    requests.sendError(request, reply, err);
  });

  // Stages 1–5 (core/pipeline.ts), before the route.
  app.addHook("onRequest", async (request, reply) => {
    const state = requests.track(request, reply);
    if (closing) throw new ShuttingDownError();
    const raw = request.raw;
    const { config } = state.generation;
    // Before anything reads a header: a field past the count or a second Host is refused, never dropped or guessed.
    checkRequestHeaders(raw.rawHeaders, config.server.max_header_count);
    checkDeclaredLength(raw.headers, config.server.max_body_bytes);
    // Every copy of a repeated header (two Authorization headers, two identity
    // headers) reaches the pipeline, so that it refuses rather than guesses.
    state.context = await state.generation.pipeline.authorize(toPipelineRequest(raw, state.abort.signal));
  });

  // Stages 6–7 and the gateway's own endpoints (proxy.ts).
  app.route({ method: FORWARDED_METHODS, url: "/*", handler: (request, reply) => proxy.handle(request, reply) });

  return {
    server: app,
    metrics: metrics.registry,
    reload(config) {
      if (closing) return Promise.reject(new Error("the gateway is shutting down"));
      return generations.reload(config);
    },
    async listen() {
      await app.listen({ host: startConfig.server.host, port: startConfig.server.port });
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
      const address = app.server.address() as AddressInfo;
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
      app.server.closeAllConnections();
    }, timeoutMs);
    timer.unref();
    try {
      app.server.closeIdleConnections();
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      await app.close();
    } finally {
      clearTimeout(timer);
      await generations.close();
      await closeAll([options.provider, store], options.log);
    }
  }
}

/**
 * The Fastify instance, TLS included: a certificate or key that cannot be
 * read or used is a ConfigError naming the key.
 */
function createFastify(config: Config, source: string, log: Logger, frameworkError: (err: Error, request: FastifyRequest, reply: FastifyReply) => void): FastifyInstance {
  const tls = config.server.tls;
  const https = tls
    ? {
        cert: readTlsFile(tls.cert_file, "server.tls.cert_file", source),
        key: readTlsFile(tls.key_file, "server.tls.key_file", source),
      }
    : null;
  try {
    return fastify({
      ...(https ? { https } : {}),
      logger: false,
      // Bodies are streamed to the upstream untouched; max_body_bytes governs (see request-body.ts).
      bodyLimit: Number.MAX_SAFE_INTEGER,
      // The gateway answers 503 in its own envelope (the onRequest hook), not Fastify's.
      return503OnClosing: false,
      // Requests with long-running streams are the norm; Node's default timeouts stay off.
      requestTimeout: 0,
      routerOptions: { maxParamLength: 65_536 },
      clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
        log.debug({ code: err.code }, "malformed request refused");
        writeClientError(err, socket);
      },
      frameworkErrors: (err, request, reply) => frameworkError(err, request, reply),
    }) as unknown as FastifyInstance;
  } catch (err) {
    if (!https) throw err;
    // A certificate or key that is readable but not valid PEM fails here.
    throw new ConfigError(source, [`server.tls: cannot use the certificate and key: ${(err as Error).message}`]);
  }
}

/** Reads a PEM file named at `configPath`, or fails naming that path. */
function readTlsFile(file: string, configPath: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(source, [`${configPath}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
}

