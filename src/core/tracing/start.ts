import type { TracingConfig } from "../config/schema.js";
import type { RequestTracer } from "./trace.js";
import type { TracerOptions } from "./otel.js";

/**
 * Starts the tracer of a `tracing` section. OpenTelemetry is imported here,
 * on first use, and only here: a gateway without `tracing` loads none of it.
 *
 * Besides the config, the batch processor reads OpenTelemetry's standard
 * `OTEL_BSP_SCHEDULE_DELAY` (ms between exports, default 5000) and
 * `OTEL_BSP_MAX_QUEUE_SIZE` (spans held at most, default 2048) and the
 * exporter's `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`
 * (ms one export may take, retries included, default 10000) from `env`; the
 * OTLP exporter reads its own `OTEL_EXPORTER_OTLP_HEADERS` (docs/tracing.md).
 *
 * @example const tracer = await startTracer(config.tracing, { log });
 */
export async function startTracer(config: TracingConfig, options: TracerOptions, env: NodeJS.ProcessEnv = process.env): Promise<RequestTracer> {
  const { createOtelTracer } = await import("./otel.js");
  return createOtelTracer(config, {
    ...options,
    scheduledDelayMs: options.scheduledDelayMs ?? positiveInteger(env.OTEL_BSP_SCHEDULE_DELAY),
    maxQueueSize: options.maxQueueSize ?? positiveInteger(env.OTEL_BSP_MAX_QUEUE_SIZE),
    exportTimeoutMs: options.exportTimeoutMs ?? positiveInteger(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT ?? env.OTEL_EXPORTER_OTLP_TIMEOUT),
  });
}

/** A positive integer, else undefined (the default applies, as the OpenTelemetry SDKs do with a bad value). */
function positiveInteger(value: string | undefined): number | undefined {
  const n = value === undefined ? NaN : Number(value);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}
