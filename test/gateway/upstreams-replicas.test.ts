import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test, type TestContext } from "node:test";
import { Agent, request } from "undici";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { scopedPostgres, type ScopedPostgres } from "../support/postgres.js";
import { requireService } from "../support/services.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { clearOfWindowEnd } from "../support/windows.js";

/**
 * Several upstreams behind several replicas: 4 `tollgate serve` processes
 * sharing one PostgreSQL record store and one Redis quota store, routing to
 * 3 demo upstreams. One identity, one quota across all of them (exact
 * counts), and a resource created through one replica and one upstream is
 * found on that upstream through every other replica.
 */

const LIMIT = 60;
const REQUESTS = 200;
const agent = new Agent({ connections: REQUESTS });

let upstreams: UpstreamProcess[] = [];
let gateways: GatewayProcess[] = [];
let pg: ScopedPostgres | undefined;
let skipped: string | undefined;

before(async (t) => {
  const [postgresUrl, redisUrl] = [await requireService(t as unknown as TestContext, "postgres"), await requireService(t as unknown as TestContext, "redis")];
  if (!postgresUrl || !redisUrl) {
    skipped = "postgres or redis not reachable";
    return;
  }
  pg = await scopedPostgres(postgresUrl, "upstreams");
  upstreams = await Promise.all([
    startUpstreamProcess(["--models", "m-big"]),
    startUpstreamProcess(["--models", "m-big"]),
    startUpstreamProcess(["--models", "m-small"]),
  ]);
  const config = {
    server: {
      auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
      quota: {
        kvstore: { type: "redis", url: redisUrl, namespace: `tollgate-test:${randomUUID()}:`, command_timeout_ms: 15_000 },
        authenticated_max_requests: LIMIT,
        period: "hour",
      },
    },
    upstreams: [
      { name: "big-1", url: upstreams[0]!.url, models: ["m-big"] },
      { name: "big-2", url: upstreams[1]!.url, models: ["m-big"] },
      { name: "small", url: upstreams[2]!.url, models: ["*"] },
    ],
    storage: { type: "postgres", url: pg.url },
  };
  gateways = await Promise.all(Array.from({ length: 4 }, () => startGateway({ config })));
});

after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(upstreams.map((u) => u.close()));
  await agent.close();
  await pg?.drop();
});

test("4 replicas routing to 3 upstreams admit exactly the quota of concurrent requests, whichever upstream serves them", async (t) => {
  if (skipped) return t.skip(skipped);
  await clearOfWindowEnd("hour", 30_000);
  const statuses = await Promise.all(
    Array.from({ length: REQUESTS }, async (_, i) => {
      const res = await request(`${gateways[i % gateways.length]!.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "x-user": "quota-across", "content-type": "application/json" },
        body: JSON.stringify({ model: i % 2 === 0 ? "m-big" : "m-small", messages: [{ role: "user", content: "hi" }] }),
        dispatcher: agent,
      });
      await res.body.dump();
      return res.statusCode;
    }),
  );
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  assert.deepEqual(counts, { 200: LIMIT, 429: REQUESTS - LIMIT });
  // Every upstream took its share: the chat completions reached all three.
  for (const upstream of upstreams) assert.ok((await upstream.requests()).some((r) => r.path === "/v1/chat/completions"));
});

test("a response created through one replica is read through every other, from the upstream that holds it", async (t) => {
  if (skipped) return t.skip(skipped);
  // Three at once through each replica: they land on both m-big upstreams (fewest in flight, counted per
  // process). With --workers 2 a replica's connections are shared among its workers, each counting its own:
  // two at once could land one on each worker, and each worker would send its one to the first upstream.
  const create = async (gateway: GatewayProcess, input: string) => {
    const res = await fetch(`${gateway.url}/v1/responses`, {
      method: "POST",
      headers: { "x-user": "sticky", "content-type": "application/json", "x-demo-delay-ms": "1000" },
      body: JSON.stringify({ model: "m-big", input }),
    });
    assert.equal(res.status, 200, await res.clone().text());
    return ((await res.json()) as { id: string }).id;
  };
  const created = async (via: GatewayProcess, i: number) => Promise.all(["a", "b", "c"].map(async (n) => ({ id: await create(via, `${n}${i}`), via })));
  const ids = (await Promise.all(gateways.map(created))).flat();
  // 12 created and 36 read: within the principal's quota of 60.
  for (const { id, via } of ids) {
    for (const gateway of gateways.filter((g) => g !== via)) {
      const res = await fetch(`${gateway.url}/v1/responses/${id}`, { headers: { "x-user": "sticky" } });
      assert.equal(res.status, 200, `${id} through ${gateway.url}: ${await res.text()}`);
    }
  }
  const holders = await Promise.all(upstreams.map(async (u) => (await u.requests()).filter((r) => r.method === "GET" && r.path.startsWith("/v1/responses/")).length));
  assert.ok(holders[0]! > 0 && holders[1]! > 0, `both m-big upstreams hold some: ${JSON.stringify(holders)}`);
  assert.equal(holders[2], 0, "never asked of the \"*\" upstream, which holds none of them");
});
