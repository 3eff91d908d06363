import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Agent, request } from "undici";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { requireService } from "../support/services.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { clearOfWindowEnd } from "../support/windows.js";

/**
 * Counting is exact across processes: N `tollgate serve` processes sharing
 * one quota store admit exactly the limit of 400 concurrent requests.
 */

const LIMIT = 100;
const REQUESTS = 400;

let upstream: UpstreamProcess;
const gateways: GatewayProcess[] = [];
const dirs: string[] = [];
// Enough sockets for every request to be in flight at once.
const agent = new Agent({ connections: REQUESTS });

before(async () => {
  upstream = await startUpstreamProcess();
});
after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await upstream?.close();
  await agent.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function replicas(n: number, kvstore: Record<string, unknown>): Promise<GatewayProcess[]> {
  const started = await Promise.all(
    Array.from({ length: n }, () =>
      startGateway({
        config: {
          server: {
            auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
            quota: { kvstore, authenticated_max_requests: LIMIT, period: "hour" },
          },
          upstream: { url: upstream.url },
          logging: { level: "info" },
        },
      }),
    ),
  );
  gateways.push(...started);
  return started;
}

/** Fires all requests at once, spread round-robin over the replicas; counts the statuses. */
async function burst(targets: GatewayProcess[], principal: string): Promise<Record<number, number>> {
  await clearOfWindowEnd("hour", 30_000);
  const statuses = await Promise.all(
    Array.from({ length: REQUESTS }, async (_, i) => {
      const res = await request(`${targets[i % targets.length]!.url}/v1/models`, { headers: { "x-user": principal }, dispatcher: agent });
      await res.body.dump();
      return res.statusCode;
    }),
  );
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

test("4 gateway processes sharing Redis admit exactly 100 of 400 concurrent requests", async (t) => {
  const url = await requireService(t, "redis");
  if (!url) return;
  // A generous command timeout: this is about exact counting, and CI machines run many tests at once.
  const targets = await replicas(4, { type: "redis", url, namespace: `tollgate-test:${randomUUID()}:`, command_timeout_ms: 15_000 });
  assert.deepEqual(await burst(targets, "concurrent-redis"), { 200: LIMIT, 429: REQUESTS - LIMIT });
  // Another principal still has its whole quota.
  assert.deepEqual(await burst(targets, "other-redis"), { 200: LIMIT, 429: REQUESTS - LIMIT });
});

test("2 gateway processes sharing one SQLite file admit exactly 100 of 400 concurrent requests", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-conc-"));
  dirs.push(dir);
  const targets = await replicas(2, { type: "sqlite", db_path: join(dir, "quota.db") });
  assert.deepEqual(await burst(targets, "concurrent-sqlite"), { 200: LIMIT, 429: REQUESTS - LIMIT });
});
