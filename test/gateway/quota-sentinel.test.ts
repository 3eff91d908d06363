import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { missingRedisTools, redisToolsOrSkip } from "../support/redis-cluster.js";
import { throwawaySentinel, type ThrowawaySentinel } from "../support/redis-sentinel.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * `kvstore: {type: redis, sentinel: {name, nodes}}` end to end, against a
 * real master, replica and sentinel this file starts: the gateway counts
 * through the master the sentinel names, and a client at its limit stays
 * refused through a failover (its count carried over, never started again).
 */

let upstream: UpstreamProcess;
let group: ThrowawaySentinel | undefined;
let gateway: GatewayProcess | undefined;

before(async () => {
  upstream = await startUpstreamProcess();
  if ((await missingRedisTools()).length === 0) group = await throwawaySentinel();
});
after(async () => {
  await gateway?.close();
  await group?.stop();
  await upstream?.close();
});

test("through Sentinel: counted on the master; a client at its limit stays refused through a failover", async (t) => {
  if (!group && !(await redisToolsOrSkip(t))) return;
  gateway = await startGateway({
    config: {
      server: {
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
        quota: {
          kvstore: { type: "redis", sentinel: { name: group!.name, nodes: [group!.sentinelUrl] }, command_timeout_ms: 2000 },
          authenticated_max_requests: 3,
          period: "hour",
        },
      },
      upstream: { url: upstream.url },
    },
  });
  const call = async (principal: string) => (await fetch(`${gateway!.url}/v1/models`, { headers: { "x-user": principal } })).status;
  assert.deepEqual([await call("alice"), await call("alice"), await call("alice"), await call("alice")], [200, 200, 200, 429]);
  assert.equal(await call("bob"), 200);

  await group!.failover();
  // Through the switch and after: alice is never let through (429, or 503 while no replica can acknowledge a count),
  // and bob gets at most the two requests he had left, however many checks failed on the way.
  const statuses = { alice: new Set<number>(), bob: [] as number[] };
  const deadline = Date.now() + 30_000;
  while (statuses.bob.at(-1) !== 429 && Date.now() < deadline) {
    statuses.alice.add(await call("alice"));
    statuses.bob.push(await call("bob"));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(statuses.bob.at(-1), 429, `bob: ${statuses.bob.join(", ")}`);
  assert.ok(statuses.bob.filter((s) => s === 200).length <= 2, `bob: ${statuses.bob.join(", ")}`);
  assert.ok(!statuses.alice.has(200), `alice: ${[...statuses.alice].join(", ")}`);
});
