/*
 * The messages a `serve --workers N` supervisor (supervisor.ts) and its
 * workers (worker.ts) exchange over the cluster IPC channel. Signals are used
 * only where IPC cannot be: a worker that has not finished starting gets
 * SIGTERM (its listeners may not be installed yet, and a message sent before
 * then would be lost).
 */

/** Ask a worker to drain and exit 0, as on SIGTERM. */
export interface ShutdownMessage {
  type: "tollgate:shutdown";
}
/** Ask a worker to reload its config file, as on SIGHUP; the supervisor validated it first. */
export interface ReloadMessage {
  type: "tollgate:reload";
}
/** Ask a worker for its own registry's metrics (`getMetricsAsJSON`). */
export interface CollectMetricsMessage {
  type: "tollgate:collect-metrics";
  id: number;
}
/** The answer to a worker's {@link MetricsRequestMessage}: the whole gateway's metrics, as text. */
export interface MetricsMessage {
  type: "tollgate:metrics";
  id: number;
  text?: string;
  error?: string;
}
/** A worker is listening (after its own `listening` log line). */
export interface ListeningMessage {
  type: "tollgate:listening";
  url: string;
}
/** A worker was asked GET /metrics: it wants every worker's metrics, aggregated. */
export interface MetricsRequestMessage {
  type: "tollgate:metrics-request";
  id: number;
}
/** A worker's answer to {@link CollectMetricsMessage}. */
export interface CollectedMetricsMessage {
  type: "tollgate:collected-metrics";
  id: number;
  metrics: object[];
}

export type ToWorker = ShutdownMessage | ReloadMessage | CollectMetricsMessage | MetricsMessage;
export type ToSupervisor = ListeningMessage | MetricsRequestMessage | CollectedMetricsMessage;

/** A message of ours (every type starts with `tollgate:`), whatever else shares the channel. */
export function isMessage<T extends { type: string }>(value: unknown): value is T {
  return typeof value === "object" && value !== null && typeof (value as { type?: unknown }).type === "string" && (value as { type: string }).type.startsWith("tollgate:");
}

/** An error as text, for a log line or an IPC answer. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
