import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test, type TestContext } from "node:test";
import { Agent, request } from "undici";
import { clientKey } from "../../src/core/quota/client-key.js";
import { eventually } from "../support/eventually.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { missingRedisTools, redisCli, redisToolsOrSkip, throwawayCluster, type ThrowawayCluster } from "../support/redis-cluster.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { clearOfWindowEnd } from "../support/windows.js";

/**
 * `kvstore: {type: redis, cluster: {nodes: [...]}}` end to end, against a
 * real 3-master Redis Cluster this file starts: 4 `tollgate serve` processes
 * count exactly, every check over three limits in one script on the
 * client's slot; a master killed mid-run never lets a client past its limit.
 */

const LIMIT = 100;
const REQUESTS = 400;

let upstream: UpstreamProcess;
let cluster: ThrowawayCluster | undefined;
const gateways: GatewayProcess[] = [];
const agent = new Agent({ connections: REQUESTS });

before(async () => {
  upstream = await startUpstreamProcess();
  if ((await missingRedisTools()).length === 0) cluster = await throwawayCluster();
});
after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await cluster?.stop();
  await upstream?.close();
  await agent.close();
});

const skipUnlessCluster = async (t: TestContext) => !cluster && !(await redisToolsOrSkip(t));

/** A gateway on the cluster; `quota` adds to (or replaces) `server.quota`'s keys. */
async function gateway(quota: Record<string, unknown>, commandTimeoutMs = 1000): Promise<GatewayProcess> {
  const started = await startGateway({
    config: {
      server: {
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
        quota: {
          // One node named: the others are discovered.
          kvstore: { type: "redis", cluster: { nodes: [cluster!.nodes[1]] }, namespace: `tollgate-test:${randomUUID()}:`, command_timeout_ms: commandTimeoutMs },
          period: "hour",
          ...quota,
        },
      },
      upstream: { url: upstream.url },
      logging: { level: "info" },
    },
  });
  gateways.push(started);
  return started;
}

async function call(target: GatewayProcess, principal: string) {
  const res = await request(`${target.url}/v1/models`, { headers: { "x-user": principal }, dispatcher: agent });
  const body = (await res.body.json()) as { error?: { code?: string } };
  return { status: res.statusCode, code: body.error?.code };
}

/** Which master (index in `cluster.masters`) holds `principal`'s counters, as the cluster computes it. */
async function masterOf(principal: string): Promise<number> {
  const tag = clientKey({ principal, attributes: {} }, undefined);
  const slot = Number(await redisCli(cluster!.masters[0]!.port, "cluster", "keyslot", tag));
  // `redis-cli --cluster create` gives three masters equal ranges, in order.
  return slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2;
}

async function principalOn(master: number, prefix: string): Promise<string> {
  for (let i = 0; ; i++) if ((await masterOf(`${prefix}-${i}`)) === master) return `${prefix}-${i}`;
}

test("4 gateway processes on a Redis Cluster admit exactly 100 of 400 concurrent requests, three limits per check", async (t) => {
  if (await skipUnlessCluster(t)) return;
  const namespace = `tollgate-test:${randomUUID()}:`;
  const quota = {
    kvstore: { type: "redis", cluster: { nodes: [cluster!.nodes[2]] }, namespace, command_timeout_ms: 15_000 },
    authenticated_max_requests: LIMIT,
    // With the hour's limit, every check reads or counts three keys: a CROSSSLOT error would be a 503.
    limits: [{ requests: 1000, period: "day" }, { tokens: 1_000_000, period: "day" }],
  };
  // A generous command timeout: this is about exact counting, and CI machines run many tests at once.
  const targets = await Promise.all(Array.from({ length: 4 }, () => gateway(quota, 15_000)));
  const burst = async (principal: string) => {
    await clearOfWindowEnd("hour", 30_000);
    const statuses = await Promise.all(Array.from({ length: REQUESTS }, (_, i) => call(targets[i % targets.length]!, principal)));
    const counts: Record<number, number> = {};
    for (const { status } of statuses) counts[status] = (counts[status] ?? 0) + 1;
    return counts;
  };
  const principals = [await principalOn(0, "burst"), await principalOn(2, "burst")];
  for (const principal of principals) assert.deepEqual(await burst(principal), { 200: LIMIT, 429: REQUESTS - LIMIT }, principal);
  // The counters are on the master the client's hash tag names, the day's beside the hour's.
  const [first] = principals as [string, string];
  const keys = (await redisCli(cluster!.masters[0]!.port, "--scan", "--pattern", `${namespace}*`)).trim().split("\n").sort();
  const tag = clientKey({ principal: first, attributes: {} }, undefined);
  assert.deepEqual(
    keys.map((k) => k.replace(/:\d+$/, "")),
    [`${namespace}{${tag}}:requests-day`, `${namespace}{${tag}}:requests-hour`],
  );
});

// Last: it kills a master for good.
test("a killed master: closed refuses its clients (503), open lets them through logged; a client at its limit is never let past it", async (t) => {
  if (await skipUnlessCluster(t)) return;
  const closed = await gateway({ authenticated_max_requests: 3, failure_mode: "closed" });
  const open = await gateway({ authenticated_max_requests: 3, failure_mode: "open" });
  const [onDead, onLive, spent] = [await principalOn(2, "dead"), await principalOn(0, "live"), await principalOn(0, "spent")];
  for (const target of [closed, open]) {
    for (let i = 0; i < 3; i++) assert.equal((await call(target, spent)).status, 200);
    assert.equal((await call(target, spent)).status, 429);
    assert.equal((await call(target, onDead)).status, 200);
  }
  await cluster!.masters[2]!.stop();

  // The dead master's clients: refused (closed) or let through (open), each in well under the command timeout.
  const down = await eventually(() => call(closed, onDead), (r) => r.status === 503);
  assert.equal(down.code, "quota_store_unavailable");
  assert.equal((await call(open, onDead)).status, 200);
  await open.waitForLog((l) => l.msg === "quota store failed" && l.outcome === "admitted");
  assert.match(await (await fetch(`${open.url}/metrics`)).text(), /^tollgate_quota_store_errors_total\{outcome="admitted"\} [1-9]/m);
  await closed.waitForLog((l) => l.msg === "quota store failed" && l.outcome === "refused");
  // /ready writes to every master: it names the quota store.
  const ready = await eventually(
    async () => {
      const res = await fetch(`${closed.url}/ready`);
      return { status: res.status, body: (await res.json()) as { checks: Record<string, string> } };
    },
    (r) => r.status === 503,
  );
  assert.notEqual(ready.body.checks.quota_store, "ok");

  // A client at its limit on a live master: refused while the cluster answers, 503 once it is marked failed; never 200.
  const seen = new Set<number>();
  for (let i = 0; i < 5; i++) seen.add((await call(closed, spent)).status);
  await cluster!.waitForState("fail", cluster!.masters.slice(0, 2));
  for (let i = 0; i < 5; i++) seen.add((await call(closed, spent)).status);
  assert.ok(!seen.has(200), `statuses seen: ${[...seen].join(", ")}`);
  assert.ok(seen.has(503));
  // Once the cluster is failed, the live master's other clients are refused too (closed).
  assert.equal((await call(closed, onLive)).status, 503);
});
