import { readFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { performance } from "node:perf_hooks";
import fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Config } from "../core/config/schema.js";
import { ConfigError, MethodNotAllowedError, NotFoundError, ShuttingDownError, TollgateError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { toPipelineRequest } from "../adapters/node.js";
import { createPipeline, type Pipeline, type RequestContext } from "../core/pipeline.js";
import { createProvider } from "../core/providers/index.js";
import type { AuthProvider } from "../core/providers/types.js";
import { quotaFromConfig } from "../core/quota/from-config.js";
import type { RecordStore } from "../core/stores/types.js";
import { VERSION } from "../version.js";
import { checkDeclaredLength, hasBody, limitBody } from "./body.js";
import { createForwarder, type Forwarder, type UpstreamResponse } from "./forward.js";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "./headers.js";
import { errorResponse, writeClientError } from "./respond.js";
import { createCatalog } from "./catalog.js";
import { policyOptions } from "../core/policy/from-config.js";
import { bodyStream, withBodyLength, type BufferedBody } from "./request-body.js";
import { meterUsage, prepareUsage, type UsagePlan } from "./usage.js";
import { createResourceGuard, type GuardedRequest, type ResourceGuard } from "./resources.js";

/** What the gateway keeps about a request while it runs; typed on Fastify's request. */
export interface GatewayRequestState {
  /** Aborted when the client disconnects before its response is complete. */
  readonly abort: AbortController;
  /** `performance.now()` when the request arrived. */
  readonly start: number;
  /** What the pipeline established; undefined until it has let the request through. */
  context: RequestContext | undefined;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the gateway's `onRequest` hook before anything else runs. */
    tollgate: GatewayRequestState | null;
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
}

export interface Gateway {
  /** The Fastify instance (routes, hooks); for tests and embedding. */
  readonly server: FastifyInstance;
  /** Starts listening on `server.host`:`server.port`; resolves with the base URL. */
  listen(): Promise<{ url: string }>;
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
  const { config, source = "config" } = options;
  const log = options.log.child({ component: "gateway" });
  const maxBodyBytes = config.server.max_body_bytes;
  const store = options.store;
  const owned: { close(): Promise<void> }[] = [];
  if (store) owned.push(store);

  let forwarder: Forwarder;
  let pipeline: Pipeline;
  let app: FastifyInstance;
  let guard: ResourceGuard;
  try {
    const provider =
      options.provider ??
      (config.server.auth ? createProvider(config.server.auth.provider_config, { store, log: options.log }) : undefined);
    if (provider) owned.push(provider);
    // Stage 5: opened after the provider, so closed before it.
    const quota = config.server.quota ? await quotaFromConfig(config.server.quota, { log: options.log }) : undefined;
    if (quota) owned.push(quota);
    pipeline = createPipeline({
      quota,
      publicPaths: config.server.public_paths,
      provider,
      onProviderError: (err) => log.warn({ err: errorMessage(err) }, "authentication provider failed"),
      // Stage 4 (route_policy, required_scopes); stage 6's decisions come through guard below. Audit: one line per decision.
      ...policyOptions(config.server.auth, options.log.child({ component: "audit" })),
    });
    guard = createResourceGuard({
      pipeline,
      catalog: createCatalog(config.server.resources),
      store,
      maxBodyBytes,
      log: options.log.child({ component: "resources" }),
    });
    forwarder = createForwarder(config.upstream);
    owned.push(forwarder);
    const tls = config.server.tls;
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
          track(request, reply);
          sendError(request, reply, err);
        },
      }) as unknown as FastifyInstance;
    } catch (err) {
      if (!https) throw err;
      // A certificate or key that is readable but not valid PEM fails here.
      throw new ConfigError(source, [`server.tls: cannot use the certificate and key: ${(err as Error).message}`]);
    }
  } catch (err) {
    await closeAll(owned.reverse());
    throw err;
  }

  let closing = false;
  let closed: Promise<void> | undefined;
  const proto = config.server.tls ? "https" : "http";

  /** Starts the request's state and its single log line (written when the response closes). */
  function track(request: FastifyRequest, reply: FastifyReply): GatewayRequestState {
    if (request.tollgate) return request.tollgate;
    const state: GatewayRequestState = { abort: new AbortController(), start: performance.now(), context: undefined };
    request.tollgate = state;
    const res = reply.raw;
    res.once("close", () => {
      const aborted = !res.writableFinished;
      if (aborted) state.abort.abort(new Error("client disconnected"));
      // Method, canonical path, status, latency, principal: never the query or a header value.
      log.info(
        {
          method: request.raw.method,
          path: loggedPath(state.context?.path),
          status: res.statusCode,
          ms: Math.round((performance.now() - state.start) * 10) / 10,
          principal: state.context?.user?.principal,
          ...(aborted ? { aborted: true } : {}),
        },
        "request",
      );
      // A keep-alive connection that just went idle must not hold the shutdown up.
      if (closing) setImmediate(() => app.server.closeIdleConnections());
    });
    return state;
  }

  /** Every error the gateway answers goes through here. */
  function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): void {
    const { status, headers: errorHeaders, body } = errorResponse(err, request.raw.url);
    // A request that passed the quota and failed later still tells the client where it stands.
    const headers = { ...request.tollgate?.context?.responseHeaders, ...errorHeaders };
    if (status >= 500 && !(err instanceof TollgateError) && !hasCode(err, "FST_")) {
      log.error({ err: errorMessage(err) }, "unexpected error");
    }
    if (reply.sent || reply.raw.headersSent) {
      // Too late for a status: the only honest signal left is a cut connection.
      reply.raw.destroy();
      return;
    }
    // An unread request body would otherwise be drained after the response; just close.
    if (!request.raw.complete || closing) headers.connection = "close";
    void reply.code(status).headers(headers).send(body);
  }

  app.decorateRequest("tollgate", null);

  // Bodies are not parsed: the stream goes upstream as it arrives (see the route).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", (_request, _payload, done) => done(null));

  app.setErrorHandler((err, request, reply) => sendError(request, reply, err));
  app.setNotFoundHandler((request, reply) => {
    track(request, reply);
    const method = request.raw.method ?? "";
    const err = FORWARDED_METHODS.includes(method)
      ? new NotFoundError()
      : new MethodNotAllowedError(method);
    sendError(request, reply, err);
  });

  app.addHook("onRequest", async (request, reply) => {
    const state = track(request, reply);
    if (closing) throw new ShuttingDownError();
    const raw = request.raw;
    checkDeclaredLength(raw.headers, maxBodyBytes);
    // Every copy of a repeated header (two Authorization headers, two identity
    // headers) reaches the pipeline, so that it refuses rather than guesses.
    state.context = await pipeline.authorize(toPipelineRequest(raw, state.abort.signal));
  });

  app.route({
    method: FORWARDED_METHODS,
    url: "/*",
    handler: async (request, reply) => {
      const state = request.tollgate!;
      const context = state.context!;
      const raw = request.raw;
      const method = raw.method ?? "GET";

      // Served by the gateway itself: liveness (no dependency check) and version.
      if ((method === "GET" || method === "HEAD") && (context.path === "/health" || context.path === "/version")) {
        if (context.responseHeaders) void reply.headers(context.responseHeaders);
        return reply.send(context.path === "/health" ? { status: "OK" } : { version: VERSION });
      }

      // Stage 6: the resource policy for what the catalog knows (resources.ts); authentication off: nothing to check.
      const guarded = context.user ? await guard.before(raw, context) : undefined;
      // Token budgets (stage 5): a streamed completion is asked to report usage (usage.ts);
      // the answer must be readable, so it is asked for uncompressed.
      const usage = context.recordTokens && method === "POST" ? await prepareUsage(raw, context.path, guarded?.body, maxBodyBytes) : undefined;
      const forwardAs = usage
        ? ({ ...guarded, body: usage.body ?? guarded?.body, inspectResponse: true } as GuardedRequest)
        : guarded;
      const answer = await forward(raw, context, state, forwardAs).catch((err: unknown) => {
        if (state.abort.signal.aborted) return undefined;
        if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) {
          log.warn({ status: err.status, err: errorMessage(err.cause ?? err) }, "upstream request failed");
        }
        throw err;
      });
      if (!answer) {
        // The client is gone; there is nobody to answer.
        reply.hijack();
        reply.raw.destroy();
        return reply;
      }
      const upstream = guarded
        ? await guard.after(guarded, context, answer, (query) => forward(raw, { ...context, query }, state, guarded, true))
        : answer;
      return relay(reply, upstream, usage);
    },
  });

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
    const headers = downstreamResponseHeaders(upstream.headers);
    if (closing) headers.connection = "close";
    // Ours replace any RateLimit fields of the upstream's: the client's limits are the gateway's.
    const quotaHeaders = reply.request.tollgate?.context?.responseHeaders;
    if (quotaHeaders) Object.assign(headers, quotaHeaders);
    try {
      for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    } catch {
      // A header value Node will not send: the upstream's answer is unusable.
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      upstream.body.destroy();
      throw new UpstreamError();
    }
    reply.hijack();
    res.statusCode = upstream.status;
    if (headers["content-length"] === undefined) res.flushHeaders();
    // pipe() plus two listeners rather than stream.pipeline, which allocates an
    // AbortController and an AbortError per call: measurable at this rate.
    const recordTokens = reply.request.tollgate?.context?.recordTokens;
    const body =
      usage && recordTokens && upstream.status >= 200 && upstream.status < 300 && headers["content-encoding"] === undefined
        ? meterUsage(
            upstream.body,
            headerText(headers["content-type"]),
            // A body of declared length cannot lose a chunk; SSE never declares one in practice.
            { stripUsageChunk: usage.stripUsageChunk && headers["content-length"] === undefined },
            (tokens) => void recordTokens(tokens),
          )
        : upstream.body;
    body.on("error", () => res.destroy());
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
  function forward(raw: IncomingMessage, context: RequestContext, state: GatewayRequestState, guarded?: GuardedRequest, bodyless = false) {
    let headers = upstreamRequestHeaders(raw.rawHeaders, {
      apiKey: config.upstream.api_key,
      principalHeader: config.upstream.principal_header,
      principal: context.user?.principal,
      forwarded: { remoteAddress: raw.socket.remoteAddress, proto, host: raw.headers.host },
    });
    if (guarded?.inspectResponse) headers = identityEncoding(headers);
    const buffered: BufferedBody | undefined = bodyless ? undefined : guarded?.body;
    if (buffered) headers = withBodyLength(headers, buffered.bytes.length);
    return forwarder.forward({
      method: raw.method ?? "GET",
      path: context.path,
      query: context.query,
      headers,
      body: bodyless ? null : buffered ? bodyStream(buffered) : hasBody(raw.headers) ? limitBody(raw, maxBodyBytes) : null,
      signal: state.abort.signal,
    });
  }

  return {
    server: app,
    async listen() {
      await app.listen({ host: config.server.host, port: config.server.port });
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
    // After the grace period, whatever still runs is cut: its upstream request
    // is aborted when its client connection closes.
    const timer = setTimeout(() => {
      log.warn({ timeout_ms: config.server.shutdown_timeout_ms }, "shutdown timeout: closing the remaining connections");
      app.server.closeAllConnections();
    }, config.server.shutdown_timeout_ms);
    timer.unref();
    try {
      app.server.closeIdleConnections();
      await app.close();
    } finally {
      clearTimeout(timer);
      await closeAll(owned.reverse());
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
