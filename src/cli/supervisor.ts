import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry } from "prom-client";
import type { Config } from "../core/config/schema.js";
import { createLogger, type Logger } from "../core/log.js";
import { openQuotaStore } from "../core/quota/from-config.js";
import { openRecordStore, type RecordStore } from "../core/stores/index.js";
import { issueFirstAdminKey } from "./first-key.js";
import { errorMessage, isMessage, type ToSupervisor, type ToWorker } from "./ipc.js";
import { watchConfigFile } from "./signals.js";
import { serveConfig, type ServeOptions } from "./start.js";

/*
 * `tollgate serve --workers N` (N > 1): the process that was started becomes a
 * supervisor with no request logic; N worker processes (node:cluster) run the
 * same `serve` command and share the listening port, the primary owning the
 * socket. Processes rather than threads, so that a worker that crashes takes
 * nothing else down. Shared state lives where it already lives for several
 * replicas behind a load balancer: quotas in the quota store (SQLite file or
 * Redis), keys and owners in the record store.
 *
 * Supervisor and workers speak over the cluster IPC channel, with the messages
 * of ipc.ts; the worker's side is worker.ts.
 */

/** A crash loop is this many unexpected worker exits... */
const CRASH_LOOP_DEATHS = 5;
/** ...within this window: the supervisor then stops instead of spinning. */
const CRASH_LOOP_WINDOW_MS = 10_000;
/** Beyond `server.shutdown_timeout_ms`, how long a draining worker may take to exit before SIGKILL. */
const SHUTDOWN_MARGIN_MS = 5_000;
/**
 * On SIGINT the supervisor waits this long before telling the workers to
 * drain: Ctrl-C in a terminal signals the whole process group, and a worker
 * told twice (signal, then message) would take the second as "exit now".
 */
const SIGINT_GRACE_MS = 250;
/** How long the supervisor waits for each worker's metrics before answering with the others'. */
const COLLECT_TIMEOUT_MS = 2_000;
/** While the config file is invalid, a missing worker is retried this often. */
const REPLACE_RETRY_MS = 1_000;

interface WorkerState {
  readonly worker: Worker;
  readonly pid: number | undefined;
  /** Set once the worker reported `listening`. */
  url?: string;
}

/** One GET /metrics in progress: the workers still to answer and what the others sent. */
interface Collection {
  readonly waiting: Set<number>;
  readonly results: object[][];
  finish(): void;
}

/**
 * `serve --workers N` with N > 1: this process supervises N worker processes
 * (node:cluster) sharing the port. `config` was read and validated by the
 * caller before any worker starts (an invalid one never gets here).
 *
 * - a worker that dies is replaced at once; {@link CRASH_LOOP_DEATHS} deaths
 *   within {@link CRASH_LOOP_WINDOW_MS} stop the gateway with exit code 1;
 * - SIGTERM / SIGINT drain every worker, then exit 0 (a second signal kills
 *   them and exits 1);
 * - SIGHUP re-validates the config file, then has every worker reload it; an
 *   invalid file is refused here and no worker sees it;
 * - GET /metrics on any worker shows every worker's metrics, aggregated
 *   (prom-client's `AggregatorRegistry.aggregate`).
 *
 * Resolves once every worker listens and the first admin key, if one was
 * needed, has been printed (then logs `workers ready`); rejects, with every
 * worker stopped, when a worker fails to start.
 */
export async function runSupervisor(opts: ServeOptions, config: Config, workers: number): Promise<void> {
  const log = createLogger(config.logging.level).child({ component: "supervisor" });
  let current = config;
  const live = new Map<number, WorkerState>();
  const deaths: number[] = [];
  const collections = new Map<number, Collection>();
  let nextCollection = 0;
  let stopping = false;
  let started = false;
  let allExited: (() => void) | undefined;
  let replaceTimer: NodeJS.Timeout | undefined;
  let replaceBlocked = false;
  let startup!: { resolve(url: string): void; reject(err: Error): void };
  const ready = new Promise<string>((resolve, reject) => (startup = { resolve, reject }));

  // Workers run this very command (`serve ...` with the same flags) and take the `cluster.isWorker` branch.
  cluster.setupPrimary({ exec: process.argv[1], args: process.argv.slice(2) });

  function tell(worker: Worker, message: ToWorker): boolean {
    if (!worker.isConnected()) return false;
    worker.send(message, (err) => {
      if (err) log.debug({ worker: worker.id, err: err.message }, "message to worker lost");
    });
    return true;
  }

  function fork(): void {
    const worker = cluster.fork();
    const state: WorkerState = { worker, pid: worker.process.pid };
    live.set(worker.id, state);
    log.info({ worker: worker.id, worker_pid: state.pid }, "worker started");
    worker.on("message", (message: unknown) => onMessage(state, message));
    worker.on("exit", (code, signal) => onExit(state, code, signal));
    // An IPC error (EPIPE to a worker that just died) must not crash the supervisor; `exit` follows.
    worker.on("error", (err) => log.debug({ worker: worker.id, err: err.message }, "worker channel error"));
  }

  function onMessage(state: WorkerState, message: unknown): void {
    if (!isMessage<ToSupervisor>(message)) return;
    switch (message.type) {
      case "tollgate:listening":
        state.url = message.url;
        if (!started && live.size === workers && [...live.values()].every((s) => s.url !== undefined)) {
          started = true;
          startup.resolve(message.url);
        }
        break;
      case "tollgate:metrics-request":
        collectMetrics().then(
          (text) => tell(state.worker, { type: "tollgate:metrics", id: message.id, text }),
          (err: unknown) => tell(state.worker, { type: "tollgate:metrics", id: message.id, error: errorMessage(err) }),
        );
        break;
      case "tollgate:collected-metrics": {
        const collection = collections.get(message.id);
        if (collection?.waiting.delete(state.worker.id)) {
          collection.results.push(message.metrics);
          if (collection.waiting.size === 0) collection.finish();
        }
        break;
      }
    }
  }

  function onExit(state: WorkerState, code: number | null, signal: string | null): void {
    const { worker, pid } = state;
    live.delete(worker.id);
    // A worker that died owes no more metrics.
    for (const collection of collections.values()) {
      if (collection.waiting.delete(worker.id) && collection.waiting.size === 0) collection.finish();
    }
    if (stopping) {
      log.info({ worker: worker.id, worker_pid: pid, code, signal }, "worker stopped");
      if (live.size === 0) allExited?.();
      return;
    }
    if (!started) {
      startup.reject(new Error(`worker ${pid} exited (${signal ?? `code ${code}`}) before listening; the supervisor stopped the others`));
      return;
    }
    const fields = { worker: worker.id, worker_pid: pid, code, signal };
    if (code !== 0 || signal !== null) log.error(fields, "worker died; starting a replacement");
    else log.warn(fields, "worker exited; starting a replacement");
    const now = Date.now();
    deaths.push(now);
    while (deaths.length > 0 && deaths[0]! <= now - CRASH_LOOP_WINDOW_MS) deaths.shift();
    if (deaths.length >= CRASH_LOOP_DEATHS) {
      log.error(
        { deaths: deaths.length, window_ms: CRASH_LOOP_WINDOW_MS },
        `crash loop: ${deaths.length} worker exits within ${CRASH_LOOP_WINDOW_MS / 1000} s; stopping the gateway`,
      );
      void stopWorkers(0).then(() => process.exit(1));
      return;
    }
    topUp();
  }

  /**
   * Forks workers until there are `workers` again. A replacement re-reads the
   * config file: if the file has become invalid since it was last loaded, the
   * fork would only fail, so the supervisor waits (the others carry the
   * traffic) and retries until the file is fixed.
   */
  function topUp(): void {
    replaceTimer = undefined;
    if (stopping || live.size >= workers) return;
    try {
      serveConfig(opts);
    } catch (err) {
      if (!replaceBlocked) {
        log.error({ err: errorMessage(err) }, "cannot start a replacement worker: the config file is invalid now; retrying every second");
      }
      replaceBlocked = true;
      replaceTimer ??= setTimeout(topUp, REPLACE_RETRY_MS);
      return;
    }
    replaceBlocked = false;
    while (live.size < workers) fork();
  }

  /**
   * Asks every worker for its registry and sums them up by prom-client's rules
   * (each metric's `aggregator`, default sum). A worker that does not answer
   * in {@link COLLECT_TIMEOUT_MS} (busy, dying) is left out of this answer
   * rather than holding it up.
   */
  function collectMetrics(): Promise<string> {
    return new Promise((resolve, reject) => {
      const id = nextCollection++;
      const collection: Collection = {
        waiting: new Set(),
        results: [],
        finish() {
          clearTimeout(timer);
          collections.delete(id);
          try {
            AggregatorRegistry.aggregate(collection.results).metrics().then(resolve, reject);
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        },
      };
      const timer = setTimeout(() => {
        log.warn({ workers: [...collection.waiting] }, "metrics: some workers did not answer in time; /metrics shows the others");
        collection.finish();
      }, COLLECT_TIMEOUT_MS);
      collections.set(id, collection);
      for (const { worker } of live.values()) {
        if (tell(worker, { type: "tollgate:collect-metrics", id })) collection.waiting.add(worker.id);
      }
      if (collection.waiting.size === 0) collection.finish();
    });
  }

  /**
   * Tells every worker to drain (after `delayMs`) and resolves once all have
   * exited: true when they did within the shutdown timeout, false when the
   * last ones had to be killed.
   */
  function stopWorkers(delayMs: number): Promise<boolean> {
    stopping = true;
    clearTimeout(replaceTimer);
    if (live.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      let forced = false;
      const limitMs = current.server.shutdown_timeout_ms + SHUTDOWN_MARGIN_MS;
      const timer = setTimeout(() => {
        forced = true;
        log.error({ workers: [...live.values()].map((s) => s.pid), timeout_ms: limitMs }, "workers still running after the shutdown timeout: killing them");
        for (const { worker } of live.values()) worker.process.kill("SIGKILL");
      }, delayMs + limitMs);
      allExited = () => {
        clearTimeout(timer);
        resolve(!forced);
      };
      const drain = () => {
        for (const { worker, url } of live.values()) {
          // A worker still starting may not listen for messages yet; SIGTERM stops it either way.
          if (url === undefined || !tell(worker, { type: "tollgate:shutdown" })) worker.process.kill("SIGTERM");
        }
      };
      if (delayMs > 0) setTimeout(drain, delayMs);
      else drain();
    });
  }

  const onStopSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal during shutdown: killing the workers");
      for (const { worker } of live.values()) worker.process.kill("SIGKILL");
      process.exit(1);
    }
    log.info({ signal, workers: live.size }, "shutting down: draining every worker");
    watcher?.close();
    void stopWorkers(signal === "SIGINT" ? SIGINT_GRACE_MS : 0).then((clean) => {
      log.info("stopped");
      process.exit(clean ? 0 : 1);
    });
  };
  process.on("SIGTERM", onStopSignal);
  process.on("SIGINT", onStopSignal);
  process.on("SIGHUP", () => reload("SIGHUP"));
  // --watch-config: the supervisor watches and validates, as for SIGHUP; workers do not watch.
  const watcher = opts.watchConfig && opts.config !== undefined ? watchConfigFile(opts.config, () => reload("file change")) : undefined;

  /**
   * Validates the file here first, so that an invalid config is refused
   * everywhere at once; then every listening worker reloads it (each logs
   * `configuration reloaded`). A worker still starting reads the file anyway.
   */
  function reload(trigger: string): void {
    if (stopping) return;
    if (opts.config === undefined) {
      // As a single process says it (serve.ts): refused, not a "reloaded" that changed nothing.
      log.error({ trigger, err: "running on the embedded default config: there is no file to re-read" }, "configuration reload refused; the previous configuration stays in force");
      return;
    }
    let next: Config;
    try {
      next = serveConfig(opts);
    } catch (err) {
      log.error({ trigger, err: errorMessage(err) }, "configuration reload refused; the previous configuration stays in force");
      return;
    }
    current = next;
    if (opts.workers === undefined && next.server.workers !== config.server.workers) {
      log.warn({ workers: next.server.workers }, "reload: server.workers changed; it takes effect on restart");
    }
    let told = 0;
    for (const { worker, url } of live.values()) if (url !== undefined && tell(worker, { type: "tollgate:reload" })) told++;
    log.info({ trigger, workers: told }, "configuration reload sent to every worker");
  }

  log.info({ workers, pid: process.pid }, "supervising workers");
  // Before any worker: a store that cannot be opened fails the start here, once.
  const store = await prepareStores(config, log);
  let url: string;
  try {
    for (let i = 0; i < workers; i++) fork();
    try {
      url = await ready;
      // Done once here rather than by every worker.
      if (store) await issueFirstAdminKey(current, store, { url, adminKeyFile: opts.adminKeyFile, log });
    } catch (err) {
      log.error({ err: errorMessage(err) }, "a worker failed to start; stopping");
      await stopWorkers(0);
      throw err;
    }
  } finally {
    await store?.close();
  }
  log.info({ url, workers, worker_pids: [...live.values()].map((s) => s.pid) }, "workers ready");
}

/**
 * Opens the stores' SQLite files once, before the workers start: N workers
 * creating the same new file at once race for the lock that creating the
 * tables (or moving a file an older Tollgate left in WAL mode to the rollback
 * journal) takes, and SQLite may refuse that at once (SQLITE_BUSY) rather
 * than wait. Once the file exists with its tables, opening it takes no such
 * lock. Returns the record store (when
 * authentication is on, as in `startServer`), for the first-key check.
 */
async function prepareStores(config: Config, log: Logger): Promise<RecordStore | undefined> {
  const kvstore = config.server.quota?.kvstore;
  if (kvstore?.type === "sqlite") await (await openQuotaStore(kvstore, log)).close();
  return config.server.auth ? openRecordStore(config.storage) : undefined;
}
