import type { TestContext } from "node:test";
import net from "node:net";

/**
 * Real services the tests use. On a developer's machine without them the
 * tests that need them skip, saying why; under CI=true an unreachable service
 * fails the run instead, so CI can never pass by skipping.
 */
export const POSTGRES_URL = process.env.TOLLGATE_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const REDIS_URL = process.env.TOLLGATE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";

function reachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port), timeout: 2000 });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * Resolves to the service URL when it answers. Otherwise: under CI=true throws
 * (the test fails); elsewhere skips the test with the reason and resolves undefined.
 */
export async function requireService(t: TestContext, name: "postgres" | "redis"): Promise<string | undefined> {
  const url = name === "postgres" ? POSTGRES_URL : REDIS_URL;
  if (await reachable(url)) return url;
  const reason = `${name} is not reachable at ${new URL(url).host} (set TOLLGATE_TEST_${name.toUpperCase()}_URL)`;
  if (process.env.CI === "true") throw new Error(`${reason}; under CI=true this fails the run`);
  t.skip(reason);
  console.error(`skipped: ${reason}`);
  return undefined;
}
