import cluster from "node:cluster";
import { errorMessage, isMessage, type ToSupervisor, type ToWorker } from "./ipc.js";
import { handleSignals } from "./signals.js";
import { startServer, type RunningServer, type ServeOptions } from "./start.js";

/** How long a worker waits for the supervisor's aggregated metrics. */
const METRICS_TIMEOUT_MS = 5_000;

/**
 * The body of a cluster worker: `startServer` with the supervisor's hooks
 * (aggregated /metrics, no first-key creation) and the single-process signal
 * handling (`handleSignals`), driven by the supervisor's messages. When the
 * supervisor goes away (killed, crashed) the worker drains and exits rather
 * than linger.
 */
export async function runWorker(opts: ServeOptions): Promise<void> {
  let running: RunningServer | undefined;
  let stopping = false;
  let nextRequest = 0;
  const pending = new Map<number, { resolve(text: string): void; reject(err: Error): void; timer: NodeJS.Timeout }>();

  function send(message: ToSupervisor): void {
    // The callback keeps a failed send (the supervisor just died) from becoming an uncaught 'error'.
    if (process.connected) process.send!(message, undefined, undefined, () => undefined);
  }

  /** Drain as on SIGTERM, through `handleSignals`; before start-up completes there is nothing to drain. */
  function stop(): void {
    if (stopping) return;
    stopping = true;
    if (running) process.kill(process.pid, "SIGTERM");
    else process.exit(0);
  }

  // Installed before start-up: a signal then must stop a worker that has nothing to drain yet,
  // and afterwards mark it stopping so that the supervisor's message is not taken as a second signal.
  const onStopSignal = () => {
    if (!running) process.exit(0);
    stopping = true;
  };
  process.on("SIGTERM", onStopSignal);
  process.on("SIGINT", onStopSignal);
  // A SIGHUP while starting must not kill the worker (the default action): it is reading the current file anyway.
  process.on("SIGHUP", () => undefined);

  // Node exits a cluster worker at once (code 0) when its IPC channel closes, unless
  // `exitedAfterDisconnect` is true (node:cluster docs, `worker.process`): set, so that a
  // worker whose supervisor died finishes its in-flight requests before exiting.
  if (cluster.worker) cluster.worker.exitedAfterDisconnect = true;
  process.on("disconnect", () => {
    if (stopping) return;
    running?.log.warn("the supervisor is gone: draining and exiting");
    stop();
  });

  process.on("message", (message: unknown) => {
    if (!isMessage<ToWorker>(message)) return;
    switch (message.type) {
      case "tollgate:shutdown":
        stop();
        break;
      case "tollgate:reload":
        // The same path as a SIGHUP to a single process: reload, log the outcome, never overlap.
        if (running && !stopping) process.kill(process.pid, "SIGHUP");
        break;
      case "tollgate:collect-metrics": {
        const { id } = message;
        (running ? running.gateway.metrics.getMetricsAsJSON() : Promise.resolve([])).then(
          (metrics) => send({ type: "tollgate:collected-metrics", id, metrics }),
          (err: unknown) => {
            running?.log.warn({ err: errorMessage(err) }, "metrics: cannot read this worker's registry");
            send({ type: "tollgate:collected-metrics", id, metrics: [] });
          },
        );
        break;
      }
      case "tollgate:metrics": {
        const request = pending.get(message.id);
        if (!request) break;
        pending.delete(message.id);
        clearTimeout(request.timer);
        if (message.text !== undefined) request.resolve(message.text);
        else request.reject(new Error(`metrics: ${message.error ?? "no answer"}`));
        break;
      }
    }
  });

  const renderMetrics = (): Promise<string> =>
    new Promise((resolve, reject) => {
      if (!process.connected) {
        reject(new Error("metrics: the supervisor is gone"));
        return;
      }
      const id = nextRequest++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`metrics: the supervisor did not answer within ${METRICS_TIMEOUT_MS} ms`));
      }, METRICS_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      send({ type: "tollgate:metrics-request", id });
    });

  try {
    running = await startServer(opts, { renderMetrics, skipFirstKey: true });
  } catch (err) {
    // main.ts reports the error (synchronously, on stderr); the IPC channel would keep this process alive.
    stopping = true;
    setImmediate(() => process.exit(1));
    throw err;
  }
  // The supervisor watches the file (--watch-config) and validates it before telling the workers.
  handleSignals(running, { ...opts, watchConfig: false });
  send({ type: "tollgate:listening", url: running.url });
}
