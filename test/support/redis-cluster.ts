import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { closedPort } from "./refusal.js";
import { redisProcess, type ThrowawayRedis } from "./redis-server.js";

/**
 * A throwaway Redis Cluster of a test's own: three masters on free ports
 * (`redis-cli --cluster create`), nothing persisted, stopped and their
 * folder removed by `stop()`. Never the machine's shared Redis.
 */

const run = promisify(execFile);

/** `redis-cli -p PORT ...args`, its output. */
export async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run("redis-cli", ["-p", String(port), ...args], { timeout: 10_000 });
  return stdout;
}

/** Which of redis-server and redis-cli are not installed. */
export async function missingRedisTools(): Promise<string[]> {
  const missing: string[] = [];
  for (const tool of ["redis-server", "redis-cli"]) {
    const ok = await new Promise<boolean>((resolve) => {
      const probe = spawn(tool, ["--version"], { stdio: "ignore" });
      probe.once("error", () => resolve(false));
      probe.once("exit", (code) => resolve(code === 0));
    });
    if (!ok) missing.push(tool);
  }
  return missing;
}

/**
 * True when redis-server and redis-cli are installed. Otherwise skips `t`
 * saying so; under CI=true (where .ci/run installs them) throws instead.
 */
export async function redisToolsOrSkip(t: { skip(message?: string): void }): Promise<boolean> {
  const missing = await missingRedisTools();
  if (missing.length === 0) return true;
  const reason = `${missing.join(" and ")} not installed`;
  if (process.env.CI === "true") throw new Error(`${reason} (required under CI=true)`);
  t.skip(reason);
  return false;
}

/** Polls `check` every 100 ms until it holds (a throw counts as not yet); fails naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface ThrowawayCluster {
  /** The masters, in `redis-cli --cluster create` order (slots 0–5460, 5461–10922, 10923–16383). */
  readonly masters: readonly ThrowawayRedis[];
  /** Their URLs, for `kvstore.cluster.nodes`. */
  readonly nodes: readonly string[];
  /** Resolves once every master reports `cluster_state:<state>` (those alive when `alive` is given). */
  waitForState(state: "ok" | "fail", alive?: readonly ThrowawayRedis[]): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A 3-master Redis Cluster. `nodeTimeoutMs` is `cluster-node-timeout`: how
 * long a master may be silent before the others mark the cluster failed.
 */
export async function throwawayCluster({ nodeTimeoutMs = 2000 }: { nodeTimeoutMs?: number } = {}): Promise<ThrowawayCluster> {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-redis-cluster-"));
  const masters: ThrowawayRedis[] = [];
  const cluster: ThrowawayCluster = {
    masters,
    nodes: [],
    async waitForState(state, alive = masters) {
      await until(`cluster_state:${state}`, async () => {
        const infos = await Promise.all(alive.map((m) => redisCli(m.port, "cluster", "info")));
        return infos.every((info) => info.includes(`cluster_state:${state}`));
      });
    },
    async stop() {
      for (const m of masters) await m.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    for (let i = 0; i < 3; i++) {
      const port = await closedPort();
      // The cluster bus port named explicitly: the default (port + 10000) may be taken or past 65535.
      const busPort = await closedPort();
      masters.push(
        redisProcess(port, [
          "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
          "--cluster-enabled", "yes", "--cluster-port", String(busPort), "--cluster-config-file", `nodes-${port}.conf`,
          "--cluster-node-timeout", String(nodeTimeoutMs), "--dir", dir,
        ]),
      );
    }
    await Promise.all(masters.map((m) => m.start()));
    await run("redis-cli", ["--cluster", "create", ...masters.map((m) => `127.0.0.1:${m.port}`), "--cluster-replicas", "0", "--cluster-yes"], {
      timeout: 30_000,
    });
    await cluster.waitForState("ok");
    (cluster.nodes as string[]).push(...masters.map((m) => m.url));
    return cluster;
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}
