import cluster from "node:cluster";
import { readFileSync, watch } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { InvalidArgumentError, type Command } from "commander";
import { checkConfigFiles } from "../core/config/files.js";
import { defaultConfig, loadConfig } from "../core/config/load.js";
import type { Config } from "../core/config/schema.js";
import { createLogger, type Logger } from "../core/log.js";
import { openRecordStore } from "../core/stores/index.js";
import type { RecordStore } from "../core/stores/types.js";
import { startDemoUpstream, type DemoUpstream } from "../demo/upstream.js";
import { createGateway, type Gateway } from "../gateway/server.js";
import { VERSION } from "../version.js";
import { issueFirstAdminKey } from "./first-key.js";
import { runSupervisor, runWorker } from "./supervisor.js";

export interface ServeOptions {
  /** Config file; absent: the embedded default (`defaultConfig`). */
  config?: string | undefined;
  /** Overrides `server.port`. */
  port?: number | undefined;
  /** Overrides `server.host`. */
  host?: string | undefined;
  /** Start the demo upstream in-process and forward to it. */
  demo?: boolean | undefined;
  /** Overrides `server.workers`: worker processes under a supervisor (supervisor.ts). */
  workers?: Workers | undefined;
  /** Reload the config when its file changes, as on SIGHUP. */
  watchConfig?: boolean | undefined;
  /** Write the first admin key here (mode 0600) instead of showing it on stderr. */
  adminKeyFile?: string | undefined;
}

/** `--workers` / `server.workers`. */
export type Workers = number | "auto";

/** What a cluster worker's `startServer` is given by its supervisor (supervisor.ts). */
export interface WorkerHooks {
  /** Renders /metrics for the whole gateway (every worker's counters), asked of the supervisor. */
  renderMetrics?: () => Promise<string>;
  /** The supervisor created the first admin key (or found one): a worker never does. */
  skipFirstKey?: boolean;
}

/** A running `tollgate serve`, for embedding and tests. */
export interface RunningServer {
  readonly url: string;
  readonly gateway: Gateway;
  readonly log: Logger;
  /**
   * Re-reads and validates the config file (flags still win) and hands it to
   * the gateway, which swaps policies, providers and limits atomically.
   * Rejects with a `ConfigError` naming each path when the new config is
   * invalid; the old one stays in force. The embedded default has no file:
   * rejects, nothing to reload.
   */
  reload(): Promise<void>;
  /** Drains the gateway, then stops the demo upstream if there is one. */
  close(): Promise<void>;
}

/** Pause between the demo upstream's SSE events, so that streaming is visible in the tour. */
const DEMO_CHUNK_DELAY_MS = 40;

function parseWorkers(value: string): Workers {
  if (value === "auto") return "auto";
  const count = Number(value);
  if (!/^\d+$/.test(value) || count < 1 || count > 1024) throw new InvalidArgumentError("expected a number of workers from 1 to 1024, or auto");
  return count;
}

/** `auto` is one worker per available core. */
export function workerCount(workers: Workers): number {
  return workers === "auto" ? availableParallelism() : workers;
}

function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65535) throw new InvalidArgumentError("expected a port number from 0 to 65535");
  return port;
}

/** `tollgate serve [--config FILE] [--port N] [--host H] [--demo]`. */
export function registerServeCommand(program: Command): void {
  program
    .command("serve")
    .description("run the gateway; ready when GET /health answers 200; SIGTERM drains in-flight requests and exits 0")
    .option("-c, --config <file>", "config file (default: built-in: API keys in ./data/tollgate.db, upstream $TOLLGATE_UPSTREAM or http://127.0.0.1:11434)")
    .option("-p, --port <n>", "port to listen on, overrides server.port (0: any free port)", parsePort)
    .option("--host <address>", "address to listen on, overrides server.host")
    .option("-w, --workers <n>", "worker processes sharing the port, or auto (one per core); overrides server.workers", parseWorkers)
    .option("--watch-config", "reload the config when its file (or its folder's ..data symlink, as in a Kubernetes ConfigMap) changes, as on SIGHUP")
    .option(
      "--admin-key-file <file>",
      "with api_key auth on a store that never held a key: write the first admin key there (mode 0600; an existing file is never overwritten) instead of stderr",
    )
    .option("--demo", "also start a small OpenAI-compatible demo upstream and forward to it (overrides upstream.url)")
    .action(async (opts: ServeOptions) => {
      if (cluster.isWorker) {
        await runWorker(opts);
        return;
      }
      const config = serveConfig(opts);
      const workers = workerCount(opts.workers ?? config.server.workers);
      if (workers > 1) {
        await runSupervisor(opts, config, workers);
        return;
      }
      const running = await startServer(opts, {}, config);
      handleSignals(running, opts);
    });
}

/**
 * Loads the config (flags win), starts the demo upstream when asked, opens the
 * record store for the `api_key` provider, starts the gateway, logs one
 * `listening` line, and when the store never held an API key creates the
 * first admin key and shows it once (first-key.ts).
 */
export async function startServer(opts: ServeOptions, hooks: WorkerHooks = {}, loaded?: Config): Promise<RunningServer> {
  const source = opts.config ?? "embedded default config";
  let config: Config = loaded ?? serveConfig(opts);
  const log = createLogger(config.logging.level);

  let demo: DemoUpstream | undefined;
  let store: RecordStore | undefined;
  let gateway: Gateway | undefined;
  try {
    if (opts.demo) {
      demo = await startDemoUpstream({ host: "127.0.0.1", port: 0, chunkDelayMs: DEMO_CHUNK_DELAY_MS });
      config = { ...config, upstream: { ...config.upstream, url: demo.url } };
      log.info({ url: demo.url }, "demo upstream started");
    }
    const providerType = config.server.auth?.provider_config?.type;
    // Every provider needs the store once authentication is on: the owners of
    // resources created through the gateway are recorded there (docs/policy.md).
    if (providerType) store = await openRecordStore(config.storage);
    if (!providerType) {
      log.warn(
        config.server.auth
          ? "server.auth has no provider_config: every request is anonymous and only route_policy rules without conditions apply"
          : "server.auth is not set: authentication is off and every request is forwarded",
      );
    }
    gateway = await createGateway({ config, log, store, source, renderMetrics: hooks.renderMetrics });
    const { url } = await gateway.listen();
    log.info({ url, upstream: withoutCredentials(config.upstream.url), auth: providerType ?? "off", quota: config.server.quota?.kvstore.type ?? "off", version: VERSION }, "listening");

    // After listening, so that a start-up failure (port in use) never swallows the only copy of a key.
    if (!hooks.skipFirstKey && store) await issueFirstAdminKey(config, store, { url, adminKeyFile: opts.adminKeyFile, log });

    const running = gateway;
    const demoUrl = demo?.url;
    return {
      url,
      gateway: running,
      log,
      async reload() {
        // Refused (and logged as such), rather than a "reloaded" that changed nothing.
        if (opts.config === undefined) throw new Error("running on the embedded default config: there is no file to re-read");
        let next = serveConfig(opts);
        if (demoUrl) next = { ...next, upstream: { ...next.upstream, url: demoUrl } };
        await running.reload(next);
      },
      async close() {
        await running.close();
        await demo?.close();
      },
    };
  } catch (err) {
    // The gateway owns the store once created; before that, close it here.
    if (gateway) await gateway.close();
    else await store?.close();
    await demo?.close();
    throw err;
  }
}

/**
 * The config `serve` runs with: the file (or the embedded default), with the
 * flags applied over it. Throws a `ConfigError` naming each invalid path, or
 * each file it names that cannot be read (the check `config validate` runs).
 */
export function serveConfig(opts: ServeOptions): Config {
  const config: Config = opts.config === undefined ? defaultConfig() : loadConfig(opts.config);
  checkConfigFiles(config, opts.config ?? "embedded default config");
  return {
    ...config,
    server: { ...config.server, port: opts.port ?? config.server.port, host: opts.host ?? config.server.host },
  };
}

/**
 * SIGTERM / SIGINT drain and exit 0 (a second one exits at once). SIGHUP (and,
 * with `--watch-config`, a change of the file) reloads the config: an invalid
 * one is logged with its paths and the old one stays in force.
 */
export function handleSignals(running: RunningServer, opts: ServeOptions): void {
  const { log } = running;
  let stopping = false;
  let watcher: { close(): void } | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal during shutdown: exiting now");
      process.exit(1);
    }
    stopping = true;
    watcher?.close();
    log.info({ signal }, "shutting down: draining in-flight requests");
    running.close().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err: err instanceof Error ? err.message : String(err) }, "error during shutdown");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  // Reloads never overlap: a signal during a reload runs one more after it.
  let reloading: Promise<void> | undefined;
  let again = false;
  const reload = (trigger: string) => {
    if (stopping) return;
    if (reloading) {
      again = true;
      return;
    }
    reloading = running
      .reload()
      .then(
        () => log.info({ trigger }, "configuration reloaded"),
        (err: unknown) => log.error({ trigger, err: err instanceof Error ? err.message : String(err) }, "configuration reload refused; the previous configuration stays in force"),
      )
      .finally(() => {
        reloading = undefined;
        if (again) {
          again = false;
          reload(trigger);
        }
      });
  };
  process.on("SIGHUP", () => reload("SIGHUP"));
  if (opts.watchConfig && opts.config !== undefined) watcher = watchConfigFile(opts.config, () => reload("file change"));
}

/**
 * Calls `onChange` once a burst of changes to `file` has settled (editors
 * write a file in several steps, or replace it by a rename) and its content
 * differs from what it was. The folder is watched, and any change in it
 * counts, because the file is not always what changes: a Kubernetes
 * ConfigMap mounts `tollgate.yaml` as a symlink to `..data/tollgate.yaml`,
 * and the kubelet updates it by pointing the `..data` symlink at a new
 * timestamped folder (rename of `..data_tmp`), so only `..data` changes.
 * Comparing the content keeps other files in the folder (a SQLite database
 * beside the config) from causing reloads.
 */
export function watchConfigFile(file: string, onChange: () => void): { close(): void } {
  const settleMs = 200;
  let timer: NodeJS.Timeout | undefined;
  const path = resolve(file);
  // The folder the path names, not the symlink's target: the target folder is replaced on every update.
  const folder = dirname(path);
  const contentOf = (): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      return `unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
    }
  };
  let last = contentOf();
  const settled = () => {
    const now = contentOf();
    if (now === last) return;
    last = now;
    onChange();
  };
  const watcher = watch(folder, () => {
    clearTimeout(timer);
    timer = setTimeout(settled, settleMs);
  });
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}

/** The upstream URL for a log line: without user:password, should it carry any. */
function withoutCredentials(url: string): string {
  const parsed = new URL(url);
  parsed.username = "";
  parsed.password = "";
  return parsed.toString();
}
