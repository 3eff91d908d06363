import { checkConfigFiles } from "../core/config/files.js";
import { defaultConfig, loadConfig } from "../core/config/load.js";
import { upstreamsOf, type Config } from "../core/config/schema.js";
import { createLogger, type Logger } from "../core/log.js";
import { openRecordStore } from "../core/stores/index.js";
import type { RecordStore } from "../core/stores/types.js";
import type { DemoUpstream } from "../demo/upstream.js";
import { createGateway, type Gateway } from "../gateway/server.js";
import { VERSION } from "../version.js";
import { issueFirstAdminKey } from "./first-key.js";

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
      // Loaded only with --demo: a production gateway never loads the demo's code.
      const { startDemoUpstream } = await import("../demo/upstream.js");
      demo = await startDemoUpstream({ host: "127.0.0.1", port: 0, chunkDelayMs: DEMO_CHUNK_DELAY_MS });
      config = withDemoUpstream(config, demo.url);
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
    log.info({ url, upstream: upstreamsOf(config).map((upstream) => withoutCredentials(upstream.url)).join(", "), auth: providerType ?? "off", quota: config.server.quota?.kvstore.type ?? "off", version: VERSION }, "listening");

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
        if (demoUrl) next = withDemoUpstream(next, demoUrl);
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

/** `--demo`: every upstream is the demo upstream (one `upstream:`, or each of `upstreams:`). */
function withDemoUpstream(config: Config, url: string): Config {
  if (config.upstreams !== undefined) return { ...config, upstreams: config.upstreams.map((upstream) => ({ ...upstream, url })) };
  return { ...config, upstream: { ...config.upstream!, url } };
}

/** The upstream URL for a log line: without user:password, should it carry any. */
function withoutCredentials(url: string): string {
  const parsed = new URL(url);
  parsed.username = "";
  parsed.password = "";
  return parsed.toString();
}
