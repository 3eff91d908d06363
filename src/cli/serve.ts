import { InvalidArgumentError, type Command } from "commander";
import { defaultConfig, loadConfig } from "../core/config/load.js";
import type { Config } from "../core/config/schema.js";
import { createApiKey } from "../core/keys.js";
import { createLogger, type Logger } from "../core/log.js";
import { openRecordStore } from "../core/stores/index.js";
import type { RecordStore } from "../core/stores/types.js";
import { startDemoUpstream, type DemoUpstream } from "../demo/upstream.js";
import { createGateway, type Gateway } from "../gateway/server.js";
import { VERSION } from "../version.js";

export interface ServeOptions {
  /** Config file; absent: the embedded default (`defaultConfig`). */
  config?: string | undefined;
  /** Overrides `server.port`. */
  port?: number | undefined;
  /** Overrides `server.host`. */
  host?: string | undefined;
  /** Start the demo upstream in-process and forward to it. */
  demo?: boolean | undefined;
}

/** A running `tollgate serve`, for embedding and tests. */
export interface RunningServer {
  readonly url: string;
  readonly gateway: Gateway;
  readonly log: Logger;
  /** Drains the gateway, then stops the demo upstream if there is one. */
  close(): Promise<void>;
}

/** Pause between the demo upstream's SSE events, so that streaming is visible in the tour. */
const DEMO_CHUNK_DELAY_MS = 40;

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
    .option("--demo", "also start a small OpenAI-compatible demo upstream and forward to it (overrides upstream.url)")
    .action(async (opts: ServeOptions) => {
      const running = await startServer(opts);
      handleSignals(running);
    });
}

/**
 * Loads the config (flags win), starts the demo upstream when asked, opens the
 * record store for the `api_key` provider, starts the gateway, logs one
 * `listening` line, and on first start with no active API key creates an
 * admin key and prints it once to stderr.
 */
export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const source = opts.config ?? "embedded default config";
  let config: Config = opts.config === undefined ? defaultConfig() : loadConfig(opts.config);
  config = {
    ...config,
    server: { ...config.server, port: opts.port ?? config.server.port, host: opts.host ?? config.server.host },
  };
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
    const providerType = config.server.auth?.provider_config.type;
    // Every provider needs the store once authentication is on: the owners of
    // resources created through the gateway are recorded there (docs/policy.md).
    if (providerType) store = await openRecordStore(config.storage);
    if (!providerType) log.warn("server.auth is not set: authentication is off and every request is forwarded");
    gateway = await createGateway({ config, log, store, source });
    const { url } = await gateway.listen();
    log.info({ url, upstream: withoutCredentials(config.upstream.url), auth: providerType ?? "off", quota: config.server.quota?.kvstore.type ?? "off", version: VERSION }, "listening");

    // After listening, so that a start-up failure (port in use) never swallows the only copy of a key.
    if (providerType === "api_key" && store && (await store.countActiveApiKeys(Date.now())) === 0) {
      const { key, record } = await createApiKey(store, { principal: "admin", attributes: { roles: ["admin"] } });
      log.info({ id: record.id, principal: record.principal }, "created the first admin API key");
      process.stderr.write(adminKeyBanner(key, url));
    }

    const running = gateway;
    return {
      url,
      gateway: running,
      log,
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

/** SIGTERM / SIGINT drain and exit 0 (a second one exits at once); SIGHUP is logged, not fatal. */
function handleSignals(running: RunningServer): void {
  const { log } = running;
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal during shutdown: exiting now");
      process.exit(1);
    }
    stopping = true;
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
  process.on("SIGHUP", () => {
    log.warn("SIGHUP: configuration reload is not supported yet; restart Tollgate to apply a changed config");
  });
}

/** The upstream URL for a log line: without user:password, should it carry any. */
function withoutCredentials(url: string): string {
  const parsed = new URL(url);
  parsed.username = "";
  parsed.password = "";
  return parsed.toString();
}

/** Printed once to stderr: a plain banner, not a log line, so that it is not shipped to log storage. */
function adminKeyBanner(key: string, url: string): string {
  const reachable = url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:");
  return [
    "",
    'Tollgate created the first API key (principal "admin", roles admin). It is shown only this once:',
    "",
    `    ${key}`,
    "",
    "Try it:",
    `    curl -H "Authorization: Bearer ${key}" ${reachable}/v1/models`,
    "",
    "More keys: tollgate keys create --principal NAME [--attr roles=user]",
    "",
    "",
  ].join("\n");
}
