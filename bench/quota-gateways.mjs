// Gateways for the quota scenarios of bench/run.mjs: the "tollgate, api_key
// auth" gateway again, with `server.quota` on (limits far above what a run
// sends, so every request is counted and admitted). Their req/s divided by
// that of "tollgate, api_key auth" in the same run is the cost of quotas.
// SQLite always; Redis when something answers at TOLLGATE_BENCH_REDIS_URL
// (default redis://127.0.0.1:6379/0), else skipped with a note on stderr.
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";

const REDIS_URL = process.env.TOLLGATE_BENCH_REDIS_URL ?? process.env.TOLLGATE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";

/** Whether something accepts TCP connections at the URL's host and port (Redis default 6379). Shared with bench/micro/quota.mjs. */
export function reachable(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || 6379), timeout: 1000 });
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => (socket.destroy(), resolve(false)));
  });
}

/**
 * Starts the quota gateways; resolves with their scenarios.
 * `startGateway(configFile, port)` starts `tollgate serve --config configFile` and waits for it.
 */
export async function quotaScenarios({ work, upstream, key, freePort, startGateway }) {
  const kvstores = [["SQLite", `{type: sqlite, db_path: "${join(work, "quota.db")}"}`]];
  if (await reachable(REDIS_URL)) kvstores.push(["Redis", `{type: redis, url: "${REDIS_URL}", namespace: "tollgate-bench:${randomUUID()}:"}`]);
  else console.error(`bench: the Redis quota scenario is skipped: nothing answers at ${new URL(REDIS_URL).host}`);
  const scenarios = [];
  for (const [label, kvstore] of kvstores) {
    const port = await freePort();
    const file = join(work, `tollgate-quota-${label.toLowerCase()}.yaml`);
    writeFileSync(
      file,
      [
        "server:",
        `  port: ${port}`,
        "  auth:",
        "    provider_config: {type: api_key}",
        "  quota:",
        `    kvstore: ${kvstore}`,
        "    authenticated_max_requests: 1000000000",
        "    period: day",
        "    limits: [{requests: 1000000000, period: second}]",
        `upstream: {url: "${upstream}"}`,
        `storage: {type: sqlite, db_path: "${join(work, "tollgate.db")}"}`,
        "logging: {level: warn}",
      ].join("\n"),
    );
    await startGateway(file, port);
    scenarios.push({
      name: `tollgate, api_key auth, quotas on (${label}, 2 limits; ratio to quotas off = req/s / "tollgate, api_key auth")`,
      url: `http://127.0.0.1:${port}/v1/models`,
      headers: { authorization: `Bearer ${key}` },
    });
  }
  return scenarios;
}
