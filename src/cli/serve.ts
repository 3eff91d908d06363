import cluster from "node:cluster";
import { availableParallelism } from "node:os";
import { InvalidArgumentError, type Command } from "commander";
import { handleSignals } from "./signals.js";
import { serveConfig, startServer, type ServeOptions, type Workers } from "./start.js";
import { runSupervisor } from "./supervisor.js";
import { runWorker } from "./worker.js";

export type { RunningServer, ServeOptions, WorkerHooks, Workers } from "./start.js";

/*
 * `tollgate serve`: the command and the choice of mode. One process serves
 * (start.ts, signals.ts); with more than one worker this process becomes the
 * supervisor (supervisor.ts) of worker processes (worker.ts), which speak
 * over the messages of ipc.ts.
 */

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

