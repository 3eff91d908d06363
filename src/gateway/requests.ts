import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { IncomingMessage, ServerResponse } from "node:http";
import { errorMessage } from "../core/carry-over.js";
import { AuthError, TollgateError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { RequestContext } from "../core/pipeline.js";
import type { RequestTrace } from "../core/tracing/trace.js";
import { lingerAfterResponse, type BodyLimits } from "./request-body.js";
import type { BufferBudget, BufferHold } from "./buffer-budget.js";
import type { GatewayGeneration, Generations } from "./generations.js";
import { routeGroup, type Decision, type GatewayMetrics } from "./metrics.js";
import { safeCanonicalPath } from "./own-endpoints.js";
import { errorResponse } from "./respond.js";

/**
 * A request's life in the gateway, from its arrival to its response's close:
 * its state, its one log line and metric observation, and every error
 * answer (the OpenAI envelope, respond.ts).
 */

/**
 * What the gateway keeps about a request while it runs, from its arrival to
 * its response's close. It is also the request's {@link BodyLimits} (its
 * generation's `max_body_bytes` and `body_idle_timeout_ms`, its share of the
 * buffer budget): one object per request, no closure.
 */
export class GatewayRequestState implements BodyLimits {
  /** `performance.now()` when the request arrived. */
  readonly start = performance.now();
  /** What the pipeline established; undefined until it has let the request through. */
  context: RequestContext | undefined = undefined;
  /** Set by the error path; otherwise derived from the context when the response closes. */
  decision: Decision | undefined = undefined;
  /** Milliseconds to the upstream's response headers, when it was asked. */
  upstreamMs: number | undefined = undefined;
  /** True once the client went away before its response was complete. */
  clientLeft = false;
  /** The request's trace (`tracing`): its server span, ended when the response closes. Undefined when tracing is off. */
  trace: RequestTrace | undefined = undefined;
  #abort: AbortController | undefined;

  constructor(
    /** The config generation serving this request from start to end (a reload does not switch it). */
    readonly generation: GatewayGeneration,
    /** `X-Request-Id`: the client's when well-formed, else a new UUID; sent upstream and back. */
    readonly requestId: string,
    /** What this request's buffered body takes of `server.max_buffered_bytes`; given back when the handler is done. */
    readonly bodyHold: BufferHold,
  ) {}

  /**
   * Aborted when the client disconnects before its response is complete.
   * Made on first use: most requests (a cached credential, a refusal, an own
   * endpoint) never wait on anything a signal could stop.
   */
  get signal(): AbortSignal {
    if (!this.#abort) {
      this.#abort = new AbortController();
      if (this.clientLeft) this.#abort.abort(new Error("client disconnected"));
    }
    return this.#abort.signal;
  }

  get maxBytes(): number {
    return this.generation.config.server.max_body_bytes;
  }

  get idleMs(): number {
    return this.generation.config.server.body_idle_timeout_ms;
  }

  reserve(bytes: number): void {
    this.bodyHold.reserve(bytes);
  }

  /** The client went away: whatever waits on {@link signal} stops. */
  leave(): void {
    this.clientLeft = true;
    this.#abort?.abort(new Error("client disconnected"));
  }
}

/** The gateway's shutdown, as a request sees it. */
export interface ShutdownState {
  /** True once shutdown has begun: answers say `Connection: close`. */
  readonly closing: boolean;
  /** A keep-alive connection that just went idle must not hold the shutdown up. */
  closeIdleConnections(): void;
}

export interface RequestsOptions {
  readonly generations: Generations;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly bodyBudget: BufferBudget;
  readonly shutdown: ShutdownState;
}

export interface Requests {
  /** Starts the request's state and its single log line and metric observation (written when the response closes). */
  track(req: IncomingMessage, res: ServerResponse): GatewayRequestState;
  /** Every error the gateway answers goes through here; `state` is absent only before {@link track}. */
  sendError(req: IncomingMessage, res: ServerResponse, state: GatewayRequestState | undefined, err: unknown): void;
}

export function createRequests({ generations, metrics, log, bodyBudget, shutdown }: RequestsOptions): Requests {
  return {
    track(req, res) {
      const generation = generations.enter();
      const state = new GatewayRequestState(generation, requestIdOf(req.headers["x-request-id"]), bodyBudget.forRequest());
      // A client's W3C traceparent is continued (core/tracing/otel.ts).
      if (generation.tracer) state.trace = generation.tracer.start(req.method ?? "GET", req.headers);
      res.setHeader("x-request-id", state.requestId);
      res.once("close", () => {
        const aborted = !res.writableFinished;
        if (aborted) state.leave();
        const context = state.context;
        const decision = state.decision ?? (context ? (context.public ? "public" : "allowed") : "error");
        const seconds = (performance.now() - state.start) / 1000;
        // A refused request has no context: its group comes from the path it asked for.
        const path = context?.path ?? safeCanonicalPath(req.url);
        const group = routeGroup(path);
        metrics.request(group, res.statusCode, decision, seconds);
        state.trace?.end(res.statusCode, path, group);
        // Method, canonical path, status, latency, principal: never the query or a header value.
        log.info(
          {
            reqId: state.requestId,
            method: req.method,
            // A refused request's too (canonical, without its query): the operator sees what was refused where.
            path: loggedPath(path),
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
        generations.leave(generation);
        if (shutdown.closing) setImmediate(() => shutdown.closeIdleConnections());
      });
      return state;
    },

    sendError(req, res, state, err) {
      const { status, headers: errorHeaders, body } = errorResponse(err);
      if (state && state.decision === undefined) {
        state.decision = decisionOf(err, status, state);
        // The trace's decision: the refusal's code; an upstream that failed was still allowed.
        if (state.trace && !(err instanceof UpstreamError || err instanceof UpstreamTimeoutError)) state.trace.refuse(body.error.code);
        if (state.decision === "429") metrics.quotaRejected();
        if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) metrics.upstreamError(err instanceof UpstreamTimeoutError ? "timeout" : "unreachable");
      }
      // The client gets the reference's short message; what exactly was wrong is logged (never the credential).
      if (err instanceof AuthError && err.detail !== undefined) log.info({ reqId: state?.requestId, detail: err.detail }, "credential refused");
      // A request that passed the quota and failed later still tells the client where it stands.
      const headers = { ...state?.context?.responseHeaders, ...errorHeaders };
      if (status >= 500 && !(err instanceof TollgateError)) {
        log.error({ err: errorMessage(err) }, "unexpected error");
      }
      if (res.headersSent || res.writableEnded) {
        // Too late for a status: the only honest signal left is a cut connection.
        res.destroy();
        return;
      }
      // An unread request body would otherwise be drained after the response:
      // close instead, lingering so that the client still sending it reads this answer.
      if (!req.complete) {
        headers.connection = "close";
        lingerAfterResponse(req, req.socket);
      }
      if (shutdown.closing) headers.connection = "close";
      sendJson(res, status, headers, body);
    },
  };
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

/** A client's `X-Request-Id` is kept when it is short and plain; anything else is replaced, never echoed. */
const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

function requestIdOf(value: string | string[] | undefined): string {
  return typeof value === "string" && REQUEST_ID.test(value) ? value : randomUUID();
}

/** Longest path written to a log line; a request line can be far longer. */
const MAX_LOGGED_PATH = 512;

function loggedPath(path: string | undefined): string | undefined {
  return path === undefined || path.length <= MAX_LOGGED_PATH ? path : `${path.slice(0, MAX_LOGGED_PATH)}...`;
}

/** Answers with `body` as JSON (`content-type` from `headers`, else JSON's), in one write. */
export function sendJson(res: ServerResponse, status: number, headers: Record<string, string>, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", ...headers, "content-length": Buffer.byteLength(text) });
  res.end(text);
}
