import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import { closedPort } from "./refusal.js";

/**
 * A throwaway `redis-server` of the test's own, on a free port, with nothing
 * persisted: for tests that stop and restart Redis. Never the machine's shared
 * Redis, which other tests use at the same time.
 */
export interface ThrowawayRedis {
  readonly port: number;
  readonly url: string;
  /** Starts (or restarts) the server on the same port; resolves once it accepts connections. */
  start(): Promise<void>;
  /** Stops the server (SIGKILL: as abrupt as a crash); resolves once it exited. */
  stop(): Promise<void>;
}

/** Resolves undefined when `redis-server` is not installed. */
export async function throwawayRedis(args: readonly string[] = []): Promise<ThrowawayRedis | undefined> {
  const installed = await new Promise<boolean>((resolve) => {
    const probe = spawn("redis-server", ["--version"], { stdio: "ignore" });
    probe.once("error", () => resolve(false));
    probe.once("exit", (code) => resolve(code === 0));
  });
  if (!installed) return undefined;
  const port = await closedPort();
  return redisProcess(port, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...args]);
}

/** `redis-server ARGS` serving on `port` (which ARGS must name), started and stopped on demand. */
export function redisProcess(port: number, args: readonly string[]): ThrowawayRedis {
  let child: ChildProcess | undefined;
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      child = spawn("redis-server", [...args], { stdio: "ignore" });
      const deadline = Date.now() + 10_000;
      for (;;) {
        const up = await new Promise<boolean>((resolve) => {
          const socket = net.connect({ host: "127.0.0.1", port });
          socket.once("connect", () => (socket.destroy(), resolve(true)));
          socket.once("error", () => resolve(false));
        });
        if (up) return;
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async stop() {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/**
 * {@link throwawayRedis}, or undefined after skipping `t` with the reason
 * printed; under `CI=true` a missing `redis-server` fails the test instead.
 */
export async function throwawayRedisOrSkip(t: { skip(message?: string): void }, args: readonly string[] = []): Promise<ThrowawayRedis | undefined> {
  const redis = await throwawayRedis(args);
  if (redis) return redis;
  if (process.env.CI === "true") throw new Error("redis-server is not installed (required under CI=true)");
  t.skip("redis-server is not installed");
  return undefined;
}
