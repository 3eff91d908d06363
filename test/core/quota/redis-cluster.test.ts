import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { Cluster, Redis } from "ioredis";
import { createRedisQuotaStore, keySlot } from "../../../src/core/quota/stores/redis.js";
import type { QuotaStore } from "../../../src/core/quota/store.js";
import { missingRedisTools, redisCli, redisToolsOrSkip, throwawayCluster, type ThrowawayCluster } from "../../support/redis-cluster.js";

/**
 * The Redis quota store on a real 3-master Redis Cluster started by this
 * file: a check over several limits stays one script on one slot, counts are
 * exact, and a master killed mid-run makes its clients' checks fail (the
 * gateway then refuses or lets through per failure_mode), never count less.
 */

let cluster: ThrowawayCluster | undefined;
const stores: QuotaStore[] = [];

before(async () => {
  if ((await missingRedisTools()).length === 0) cluster = await throwawayCluster();
});
after(async () => {
  for (const s of stores) await s.close();
  await cluster?.stop();
});

function open(namespace = `tollgate-test:${randomUUID()}:`, commandTimeoutMs = 1000): QuotaStore {
  const store = createRedisQuotaStore({ location: { cluster: { nodes: cluster!.nodes.slice(0, 1) } }, namespace, commandTimeoutMs });
  stores.push(store);
  return store;
}

/** The index in `cluster.masters` of the master serving `tag`'s slot, as the cluster itself says. */
async function masterOf(tag: string): Promise<number> {
  const slot = Number(await redisCli(cluster!.masters[0]!.port, "cluster", "keyslot", tag));
  const admin = new Redis(cluster!.masters[0]!.url);
  try {
    const owner = (await admin.cluster("SLOTS")).find(([from, to]) => slot >= from && slot <= to)!;
    return cluster!.masters.findIndex((m) => m.port === owner[2]![1]);
  } finally {
    admin.disconnect();
  }
}

/** A client key whose slot is served by master `index`. */
async function clientOn(index: number): Promise<string> {
  for (let i = 0; ; i++) if ((await masterOf(`u_client${i}`)) === index) return `u_client${i}`;
}

/** True (the test skipped, or failed under CI=true) when the cluster could not be started for want of redis-server / redis-cli. */
const skipUnlessCluster = async (t: import("node:test").TestContext) => !cluster && !(await redisToolsOrSkip(t));

test("cluster: the slot of a key is the one Redis computes (CRC16 mod 16384)", async (t) => {
  if (await skipUnlessCluster(t)) return;
  for (const key of ["foo", "probe-0", "u_Zm9vYmFyYmF6cXV4cXV1eA", "123456789"]) {
    assert.equal(keySlot(key), Number(await redisCli(cluster!.masters[0]!.port, "cluster", "keyslot", key)), key);
  }
});

test("cluster: a check over several limits is one script on the client's slot; clients spread over the masters", async (t) => {
  if (await skipUnlessCluster(t)) return;
  const namespace = `tollgate-test:${randomUUID()}:`;
  const store = open(namespace);
  const expiresAt = Date.now() + 60_000;
  const homes = new Set<number>();
  for (let i = 0; i < 12; i++) {
    const client = `u_spread${i}`;
    const second = { key: `${client}:requests-second:0`, limit: 1, consume: true, expiresAt };
    const day = { key: `${client}:requests-day:0`, limit: 10, consume: true, expiresAt };
    const tokens = { key: `${client}:tokens-day:0`, limit: 100, consume: false, expiresAt };
    assert.deepEqual(await store.hit([second, day, tokens]), { admitted: true, counts: [1, 1, 0] });
    // All or nothing: the second counter is full, so the day counter is not incremented either.
    assert.deepEqual(await store.hit([second, day, tokens]), { admitted: false, counts: [1, 1, 0] });
    homes.add(await masterOf(client));
  }
  assert.equal(homes.size, 3, "twelve clients' counters live on all three masters");
  // The keys are where the cluster serves them: read back through an independent client.
  const admin = new Cluster([{ host: "127.0.0.1", port: cluster!.masters[1]!.port }]);
  try {
    assert.equal(await admin.get(`${namespace}{u_spread3}:requests-day:0`), "1");
  } finally {
    admin.disconnect();
  }
});

test("cluster: concurrent checks admit exactly the limit", async (t) => {
  if (await skipUnlessCluster(t)) return;
  // Three stores (three connections to the cluster) sharing one namespace, as three gateways would.
  const namespace = `tollgate-test:${randomUUID()}:`;
  const sharing = [open(namespace), open(namespace), open(namespace)];
  const counters = [
    { key: "u_exact:requests-hour:0", limit: 50, consume: true, expiresAt: Date.now() + 60_000 },
    { key: "u_exact:requests-day:0", limit: 1000, consume: true, expiresAt: Date.now() + 60_000 },
  ];
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => sharing[i % sharing.length]!.hit(counters)));
  assert.equal(results.filter((r) => r.admitted).length, 50);
  assert.deepEqual((await sharing[0]!.hit(counters)).counts, [50, 50]);
});

test("cluster: /ready's probe writes to every master", async (t) => {
  if (await skipUnlessCluster(t)) return;
  const namespace = `tollgate-test:${randomUUID()}:`;
  const store = open(namespace);
  await store.ping();
  const perMaster = await Promise.all(cluster!.masters.map((m) => redisCli(m.port, "--scan", "--pattern", `${namespace}*`)));
  assert.deepEqual(
    perMaster.map((keys) => keys.trim().split("\n").filter(Boolean).length),
    [1, 1, 1],
  );
});

// Last: it kills a master for good.
test("cluster: a killed master fails its clients' checks and /ready at once; others count on until the cluster is marked failed", async (t) => {
  if (await skipUnlessCluster(t)) return;
  const store = open(undefined, 1000);
  const expiresAt = Date.now() + 60_000;
  const [onDead, onLive] = [await clientOn(2), await clientOn(0)];
  const check = (client: string) => store.hit([{ key: `${client}:requests-day:0`, limit: 100, consume: true, expiresAt }]);
  assert.deepEqual((await check(onDead)).counts, [1]);
  assert.deepEqual((await check(onLive)).counts, [1]);
  await cluster!.masters[2]!.stop();
  const started = Date.now();
  await assert.rejects(check(onDead));
  assert.ok(Date.now() - started < 3000, `failed in ${Date.now() - started} ms`);
  await assert.rejects(store.ping());
  // Until the others mark the cluster failed (cluster-node-timeout), a live master's client counts on, from where it was.
  const live = await check(onLive).catch(() => undefined);
  if (live) assert.deepEqual(live.counts, [2]);
  await cluster!.waitForState("fail", cluster!.masters.slice(0, 2));
  await assert.rejects(check(onLive));
  await assert.rejects(check(onDead));
});
