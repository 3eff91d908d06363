import type { Closeable } from "../carry-over.js";

/**
 * What the request path knows of tracing: a request's trace and the spans
 * of its stages. No OpenTelemetry type appears here, so that the pipeline
 * and the gateway import nothing of it (the implementation, otel.ts, is
 * loaded only when `tracing` is configured: start.ts). When tracing is off
 * every holder of a {@link RequestTrace} has `undefined` and makes no span.
 */

/** The child spans of a request's server span, named after the stage they time. */
export type TraceStage = "authenticate" | "route_policy" | "quota" | "resource_policy";

/** One span. Attribute values are never credentials: callers pass only what DESIGN.md's Tracing section names. */
export interface TraceSpan {
  set(name: string, value: string | number): void;
  /** Ends the span; with `error`, marks it failed with the error's code (`error.type`), never its message. */
  end(error?: unknown): void;
}

/** The span of the upstream call. */
export interface UpstreamSpan extends TraceSpan {
  /**
   * The request headers (Node's flat `[name, value, ...]`) with the client's
   * `traceparent` and `tracestate` replaced by ones naming this span as the
   * parent: the upstream continues the gateway's trace.
   */
  propagate(headers: readonly string[]): string[];
}

/** One request's trace: its server span and the children of it. */
export interface RequestTrace {
  /** Starts a stage's span as a child of the request's span. */
  stage(stage: TraceStage): TraceSpan;
  /** Starts the span of a request to the upstream at `url` (its `server.address` and `server.port`; never its path or credentials). */
  upstream(method: string, url: string): UpstreamSpan;
  /** Sets an attribute of the request's span (`gen_ai.request.model`). */
  set(name: string, value: string): void;
  /** The request was refused, or failed, with this code (`tollgate.decision`; default `allow`). */
  refuse(code: string): void;
  /** Ends the request's span: its response status, canonical path (undefined when it had none) and route group. */
  end(status: number, path: string | undefined, group: string): void;
}

/** Starts a trace per request; `close()` flushes what is pending (bounded) and stops exporting. */
export interface RequestTracer extends Closeable {
  /** `headers`: the request's, names lower-case; a W3C `traceparent` in them is continued. */
  start(method: string, headers: Readonly<Record<string, string | string[] | undefined>>): RequestTrace;
}

/**
 * Ends `span` when `work` settles (failed with its error), and settles as
 * `work` does. Callers use it only when a trace exists: no closure otherwise.
 *
 * @example const user = await (trace ? traced(trace.stage("authenticate"), authenticate()) : authenticate());
 */
export function traced<T>(span: TraceSpan, work: Promise<T>): Promise<T> {
  return work.then(
    (value) => {
      span.end();
      return value;
    },
    (err: unknown) => {
      span.end(err);
      throw err;
    },
  );
}
