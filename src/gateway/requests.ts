import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { FastifyReply, FastifyRequest } from "fastify";
import { errorMessage } from "../core/carry-over.js";
import { AuthError, TollgateError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { RequestContext } from "../core/pipeline.js";
import { lingerAfterResponse } from "./request-body.js";
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

/** What the gateway keeps about a request while it runs; typed on Fastify's request. */
export interface GatewayRequestState {
  /** Aborted when the client disconnects before its response is complete. */
  readonly abort: AbortController;
  /** `performance.now()` when the request arrived. */
  readonly start: number;
  /** What the pipeline established; undefined until it has let the request through. */
  context: RequestContext | undefined;
  /** The config generation serving this request from start to end (a reload does not switch it). */
  readonly generation: GatewayGeneration;
  /** `X-Request-Id`: the client's when well-formed, else a new UUID; sent upstream and back. */
  readonly requestId: string;
  /** Set by the error path; otherwise derived from the context when the response closes. */
  decision: Decision | undefined;
  /** Milliseconds to the upstream's response headers, when it was asked. */
  upstreamMs: number | undefined;
  /** What this request's buffered body takes of `server.max_buffered_bytes`; given back when the handler is done. */
  readonly bodyHold: BufferHold;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the gateway's `onRequest` hook before anything else runs. */
    gatewayState: GatewayRequestState | null;
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
  /** Starts the request's state and its single log line (written when the response closes); idempotent. */
  track(request: FastifyRequest, reply: FastifyReply): GatewayRequestState;
  /** Every error the gateway answers goes through here. */
  sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): void;
}

export function createRequests({ generations, metrics, log, bodyBudget, shutdown }: RequestsOptions): Requests {
  return {
    track(request, reply) {
      if (request.gatewayState) return request.gatewayState;
      const generation = generations.enter();
      const state: GatewayRequestState = {
        abort: new AbortController(),
        start: performance.now(),
        context: undefined,
        generation,
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
        generations.leave(generation);
        if (shutdown.closing) setImmediate(() => shutdown.closeIdleConnections());
      });
      return state;
    },

    sendError(request, reply, err) {
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
      if (shutdown.closing) headers.connection = "close";
      void reply.code(status).headers(headers).send(body);
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

function hasCode(err: unknown, prefix: string): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith(prefix);
}
