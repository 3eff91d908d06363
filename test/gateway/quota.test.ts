import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { clearOfWindowEnd } from "../support/windows.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * Stage 5 end to end: `tollgate serve` processes with `server.quota`, the
 * demo upstream behind them, SQLite as the quota store.
 */

let upstream: UpstreamProcess;
const dirs: string[] = [];
const gateways: GatewayProcess[] = [];

before(async () => {
  upstream = await startUpstreamProcess();
});
after(async () => {
  for (const g of gateways) await g.close();
  await upstream?.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-gw-"));
  dirs.push(dir);
  return dir;
}

async function gateway(quota: Record<string, unknown>, auth?: Record<string, unknown>, storage?: Record<string, unknown>): Promise<GatewayProcess> {
  const g = await startGateway({
    config: {
      server: { ...(auth ? { auth: { provider_config: auth } } : {}), quota },
      upstream: { url: upstream.url },
      ...(storage ? { storage } : {}),
      logging: { level: "info" },
    },
  });
  gateways.push(g);
  return g;
}

const asUser = (principal: string, roles = "user") => ({ "x-user": principal, "x-user-attributes": JSON.stringify({ roles: [roles] }) });
const headerAuth = { type: "upstream_header", principal_header: "x-user", attributes_header: "x-user-attributes", trusted_proxies: ["127.0.0.1"] };

test("successful responses carry RateLimit and RateLimit-Policy; over the limit is a 429 OpenAI error with Retry-After", async () => {
  const dir = tempDir();
  const g = await gateway({ kvstore: { type: "sqlite", db_path: join(dir, "q.db") }, authenticated_max_requests: 2, period: "hour" }, headerAuth);
  await clearOfWindowEnd("hour", 30_000);
  const ok = await fetch(`${g.url}/v1/models`, { headers: asUser("alice") });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("ratelimit-policy"), '"requests-hour";q=2;w=3600');
  assert.match(ok.headers.get("ratelimit")!, /^"requests-hour";r=1;t=\d+$/);
  // A tagged request that passes is found upstream by its tag: the not-forwarded check below can fail.
  const passedTag = newTag();
  await (await fetch(`${g.url}/v1/models`, { headers: { ...asUser("alice"), ...passedTag.headers } })).arrayBuffer();
  await assertForwarded(upstream, passedTag.tag);
  const refusedTag = newTag();
  const refused = await fetch(`${g.url}/v1/models`, { headers: { ...asUser("alice"), ...refusedTag.headers } });
  assert.equal(refused.status, 429);
  await assertNotForwarded(upstream, refusedTag.tag);
  assert.deepEqual(await refused.json(), {
    error: { message: "Quota exceeded", type: "rate_limit_error", code: "rate_limit_exceeded", param: null },
  });
  const retry = Number(refused.headers.get("retry-after"));
  assert.ok(retry >= 1 && retry <= 3600, `Retry-After ${retry}`);
  assert.match(refused.headers.get("ratelimit")!, /^"requests-hour";r=0;t=\d+$/);
  // Refused requests never reach the upstream.
  const seen = (await upstream.requests()).filter((r) => r.headers["x-user"] === "alice");
  assert.equal(seen.length, 2);
  // Public paths are not counted.
  assert.equal((await fetch(`${g.url}/health`)).status, 200);
});

test("two tokens of one principal share one quota; two principals do not", async () => {
  const dir = tempDir();
  const storage = { type: "sqlite", db_path: join(dir, "records.db") };
  const records = await openRecordStore(storage as never);
  const { key: aliceKey1 } = await createApiKey(records, { principal: "alice", attributes: {} });
  const { key: aliceKey2 } = await createApiKey(records, { principal: "alice", attributes: {} });
  const { key: bobKey } = await createApiKey(records, { principal: "bob", attributes: {} });
  await records.close();
  const g = await gateway({ kvstore: { type: "sqlite", db_path: join(dir, "q.db") }, authenticated_max_requests: 3 }, { type: "api_key" }, storage);
  const call = async (key: string) => {
    const res = await fetch(`${g.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    await res.arrayBuffer();
    return res.status;
  };
  assert.deepEqual([await call(aliceKey1), await call(aliceKey2), await call(aliceKey1), await call(aliceKey2)], [200, 200, 200, 429]);
  assert.deepEqual([await call(bobKey), await call(bobKey), await call(bobKey), await call(bobKey)], [200, 200, 200, 429]);
  // No token and no principal in the quota store or the log.
  for (const secret of [aliceKey1, aliceKey2, bobKey]) assert.ok(!g.stdout().includes(secret));
});

test("a window that rolls over admits again", async () => {
  const dir = tempDir();
  const g = await gateway({ kvstore: { type: "sqlite", db_path: join(dir, "q.db") }, authenticated_max_requests: 2, period: "second" }, headerAuth);
  // Start just after a second begins, so that three requests fall in one window.
  await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
  const statuses = [];
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${g.url}/v1/models`, { headers: asUser("roll") });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  assert.deepEqual(statuses, [200, 200, 429]);
  await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
  assert.equal((await fetch(`${g.url}/v1/models`, { headers: asUser("roll") })).status, 200);
});

test("several limits and tiers: premium users get the tier's limits", async () => {
  const dir = tempDir();
  const g = await gateway(
    {
      kvstore: { type: "sqlite", db_path: join(dir, "q.db") },
      authenticated_max_requests: 100,
      limits: [{ requests: 1, period: "minute" }],
      tiers: [{ name: "premium", when: "user with premium in roles", limits: [{ requests: 3, period: "minute" }] }],
    },
    headerAuth,
  );
  const statuses = async (headers: Record<string, string>) => {
    const out = [];
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${g.url}/v1/models`, { headers });
      await res.arrayBuffer();
      out.push(res.status);
    }
    return out;
  };
  // Both bursts in one minute window: one that straddles its end is counted in two.
  await clearOfWindowEnd("minute", 10_000);
  assert.deepEqual(await statuses(asUser("pat", "premium")), [200, 200, 200, 429]);
  assert.deepEqual(await statuses(asUser("sam", "user")), [200, 429, 429, 429]);
});

test("anonymous clients are counted by address; X-Forwarded-For only from trusted proxies", async () => {
  const dir = tempDir();
  const untrusting = await gateway({ kvstore: { type: "sqlite", db_path: join(dir, "a.db") }, anonymous_max_requests: 1 });
  const a = await fetch(`${untrusting.url}/v1/models`, { headers: { "x-forwarded-for": "198.51.100.1" } });
  await a.arrayBuffer();
  // A different claimed address does not buy a new quota from an untrusted peer.
  const b = await fetch(`${untrusting.url}/v1/models`, { headers: { "x-forwarded-for": "198.51.100.2" } });
  await b.arrayBuffer();
  assert.deepEqual([a.status, b.status], [200, 429]);

  const trusting = await gateway({ kvstore: { type: "sqlite", db_path: join(dir, "b.db") }, anonymous_max_requests: 1, trusted_proxies: ["127.0.0.1/32", "::1"] });
  const statuses = [];
  for (const client of ["198.51.100.1", "198.51.100.2", "198.51.100.1"]) {
    const res = await fetch(`${trusting.url}/v1/models`, { headers: { "x-forwarded-for": client } });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  assert.deepEqual(statuses, [200, 200, 429]);
});
