import { defaultTextMapGetter, defaultTextMapSetter, ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Context, type Span, type Tracer } from "@opentelemetry/api";
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type ReadableSpan,
  type Span as SdkSpan,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace";
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
  ATTR_URL_PATH,
} from "@opentelemetry/semantic-conventions";
import { errorMessage } from "../carry-over.js";
import type { TracingConfig } from "../config/schema.js";
import type { Logger } from "../log.js";
import { VERSION } from "../../version.js";
import type { RequestTrace, RequestTracer, TraceSpan, TraceStage, UpstreamSpan } from "./trace.js";

/**
 * The OpenTelemetry side of tracing (DESIGN.md "Tracing"), loaded only when
 * `tracing` is configured (start.ts).
 *
 * The SDK's TracerProvider is used on its own: nothing is registered
 * globally (no global tracer provider, propagator or context manager), so
 * an application embedding Tollgate keeps its own OpenTelemetry setup, and
 * no AsyncLocalStorage context is carried through every callback of the
 * process. Parents are passed explicitly: each stage's span is started in
 * the request span's context.
 *
 * Export is off the request path: ended spans go to a batch processor whose
 * queue is bounded ({@link TracerOptions.maxQueueSize}); spans past it and
 * spans of a failed export are dropped and counted (`onDropped`), and a
 * failing collector is logged once until it answers again.
 */

/** `gen_ai.request.model` (OpenTelemetry's GenAI conventions, still incubating: named here rather than imported). */
export const ATTR_GEN_AI_REQUEST_MODEL = "gen_ai.request.model";
export const ATTR_ROUTE_GROUP = "tollgate.route_group";
export const ATTR_DECISION = "tollgate.decision";

/** Why spans were dropped: the queue was full, or the collector did not take them. */
export type DropReason = "queue_full" | "export_failed";

export interface TracerOptions {
  readonly log: Logger;
  /** Spans dropped, for the `tollgate_trace_spans_dropped_total` metric. */
  readonly onDropped?: ((reason: DropReason, spans: number) => void) | undefined;
  /** Ended spans held for export at most; past it they are dropped. Default 2048 (the SDK's). */
  readonly maxQueueSize?: number | undefined;
  /** Milliseconds between two exports. Default 5000 (the SDK's). */
  readonly scheduledDelayMs?: number | undefined;
  /** One export's timeout, retries included. Default 10 s. */
  readonly exportTimeoutMs?: number | undefined;
  /** How long close() waits for pending spans to leave. Default 5 s. */
  readonly closeTimeoutMs?: number | undefined;
}

const propagator = new W3CTraceContextPropagator();

/** Builds the tracer for `tracing` (see the module comment). */
export function createOtelTracer(config: TracingConfig, options: TracerOptions): RequestTracer {
  const { log, onDropped, maxQueueSize = 2048, scheduledDelayMs = 5000, exportTimeoutMs = 10_000, closeTimeoutMs = 5000 } = options;
  const queue = { pending: 0 };
  const exporter = new CountingExporter(
    new OTLPTraceExporter({ url: `${config.otlp_endpoint.replace(/\/+$/, "")}/v1/traces`, timeoutMillis: exportTimeoutMs }),
    queue,
    log,
    onDropped,
  );
  const batch = new BatchSpanProcessor({ exporter, maxQueueSize, maxExportBatchSize: Math.min(512, maxQueueSize), scheduledDelayMillis: scheduledDelayMs, exportTimeoutMillis: exportTimeoutMs });
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.service_name, [ATTR_SERVICE_VERSION]: VERSION }),
    // A new trace is recorded at `sample_ratio`; a client's traceparent keeps its sampled flag (the W3C and OpenTelemetry default).
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sample_ratio) }),
    spanProcessors: [new BoundedProcessor(batch, queue, maxQueueSize, onDropped)],
  });
  const tracer = provider.getTracer("tollgate", VERSION);
  const servers = new Map<string, Server>();
  let closed: Promise<void> | undefined;

  return {
    start(method, headers) {
      const parent = headers.traceparent === undefined ? ROOT_CONTEXT : propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
      const span = tracer.startSpan(method, { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: method } }, parent);
      return new OtelRequestTrace(tracer, span, method, servers);
    },
    close() {
      closed ??= withTimeout(provider.shutdown(), closeTimeoutMs).catch((err: unknown) => log.warn({ err: errorMessage(err) }, "pending spans could not be exported at shutdown"));
      return closed;
    },
  };
}

class OtelSpan implements UpstreamSpan {
  constructor(readonly span: Span) {}

  set(name: string, value: string | number): void {
    this.span.setAttribute(name, value);
  }

  end(error?: unknown): void {
    if (error !== undefined) {
      // The code only: a message can carry what the client sent or an upstream's address.
      this.span.setAttribute(ATTR_ERROR_TYPE, errorCode(error));
      this.span.setStatus({ code: SpanStatusCode.ERROR });
    }
    this.span.end();
  }

  propagate(headers: readonly string[]): string[] {
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!.toLowerCase();
      if (name !== "traceparent" && name !== "tracestate") out.push(headers[i]!, headers[i + 1]!);
    }
    const carrier: Record<string, string> = {};
    propagator.inject(trace.setSpan(ROOT_CONTEXT, this.span), carrier, defaultTextMapSetter);
    for (const [name, value] of Object.entries(carrier)) out.push(name, value);
    return out;
  }
}

class OtelRequestTrace implements RequestTrace {
  readonly #context: Context;
  #decision = "allow";

  constructor(
    private readonly tracer: Tracer,
    private readonly span: Span,
    private readonly method: string,
    private readonly servers: Map<string, Server>,
  ) {
    this.#context = trace.setSpan(ROOT_CONTEXT, span);
  }

  stage(stage: TraceStage): TraceSpan {
    return new OtelSpan(this.tracer.startSpan(stage, { kind: SpanKind.INTERNAL }, this.#context));
  }

  upstream(method: string, url: string): UpstreamSpan {
    const { address, port } = serverOf(this.servers, url);
    const attributes = { [ATTR_HTTP_REQUEST_METHOD]: method, [ATTR_SERVER_ADDRESS]: address, [ATTR_SERVER_PORT]: port };
    return new OtelSpan(this.tracer.startSpan("upstream", { kind: SpanKind.CLIENT, attributes }, this.#context));
  }

  set(name: string, value: string): void {
    this.span.setAttribute(name, value);
  }

  refuse(code: string): void {
    this.#decision = code;
  }

  end(status: number, path: string | undefined, group: string): void {
    // Named by method and route group: a low-cardinality name, as OpenTelemetry asks (the path is an attribute).
    this.span.updateName(`${this.method} ${group}`);
    this.span.setAttributes({ [ATTR_HTTP_RESPONSE_STATUS_CODE]: status, [ATTR_ROUTE_GROUP]: group, [ATTR_DECISION]: this.#decision });
    if (path !== undefined) this.span.setAttribute(ATTR_URL_PATH, path);
    // A server span fails on 5xx only: a 4xx is the client's (OpenTelemetry's HTTP conventions).
    if (status >= 500) {
      this.span.setAttribute(ATTR_ERROR_TYPE, String(status));
      this.span.setStatus({ code: SpanStatusCode.ERROR });
    }
    this.span.end();
  }
}

/** Where an upstream span's request goes (parsed once per URL: a config names a few). */
type Server = { address: string; port: number };

/** The host and port of an upstream URL (validated by the config schema), from `servers` or added to it. */
function serverOf(servers: Map<string, Server>, url: string): Server {
  let server = servers.get(url);
  if (server === undefined) {
    const parsed = new URL(url);
    server = { address: parsed.hostname, port: parsed.port === "" ? (parsed.protocol === "https:" ? 443 : 80) : Number(parsed.port) };
    if (servers.size >= 64) servers.clear();
    servers.set(url, server);
  }
  return server;
}

/** A Tollgate error's code, an undici/Node error's code, else its class name. */
function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return err instanceof Error ? err.name : "error";
}

/** Counts the spans handed to the batch processor and not yet exported. */
interface Queue {
  pending: number;
}

/**
 * In front of the batch processor: refuses a span when the queue is full,
 * counting it (the SDK drops it too, but only says so in its diagnostic log).
 */
class BoundedProcessor implements SpanProcessor {
  constructor(
    private readonly inner: SpanProcessor,
    private readonly queue: Queue,
    private readonly maxQueueSize: number,
    private readonly onDropped: TracerOptions["onDropped"],
  ) {}

  onStart(span: SdkSpan, parentContext: Context): void {
    this.inner.onStart(span, parentContext);
  }

  onEnd(span: ReadableSpan): void {
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.queue.pending >= this.maxQueueSize) {
      this.onDropped?.("queue_full", 1);
      return;
    }
    this.queue.pending++;
    this.inner.onEnd(span);
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush();
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
}

/** Around the OTLP exporter: spans leave the queue, a failed export's spans are counted, an outage logged once. */
class CountingExporter implements SpanExporter {
  #failing = false;

  constructor(
    private readonly inner: SpanExporter,
    private readonly queue: Queue,
    private readonly log: Logger,
    private readonly onDropped: TracerOptions["onDropped"],
  ) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.queue.pending -= spans.length;
    this.inner.export(spans, (result) => {
      if (result.code === ExportResultCode.SUCCESS) {
        if (this.#failing) this.log.info("trace export recovered");
        this.#failing = false;
      } else {
        this.onDropped?.("export_failed", spans.length);
        if (!this.#failing) this.log.warn({ err: result.error ? errorMessage(result.error) : undefined }, "trace export failed: spans are dropped until the collector answers");
        this.#failing = true;
      }
      done(result);
    });
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
}

function withTimeout(work: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
