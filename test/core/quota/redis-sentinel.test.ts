import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test, type TestContext } from "node:test";
import { createRedisQuotaStore } from "../../../src/core/quota/stores/redis.js";
import type { QuotaStore } from "../../../src/core/quota/store.js";
import { missingRedisTools, redisCli, redisToolsOrSkip, until } from "../../support/redis-cluster.js";
import { throwawaySentinel, type ThrowawaySentinel } from "../../support/redis-sentinel.js";

/**
 * The Redis quota store behind Sentinel, against a real master, replica and
 * sentinel this file starts: it finds the master through the sentinel,
 * counts exactly, and after a failover (SENTINEL FAILOVER) writes to the new
 * master, the counts carried over by replication.
 */

let group: ThrowawaySentinel | undefined;
const stores: QuotaStore[] = [];

before(async () => {
  if ((await missingRedisTools()).length === 0) group = await throwawaySentinel();
});
after(async () => {
  for (const s of stores) await s.close();
  await group?.stop();
});

const skipUnlessSentinel = async (t: TestContext) => !group && !(await redisToolsOrSkip(t));

/** A generous command timeout (half of it for a replica's acknowledgement): CI machines run many tests at once. */
function open(namespace: string, commandTimeoutMs = 4000): QuotaStore {
  const store = createRedisQuotaStore({ location: { sentinel: { name: group!.name, nodes: [group!.sentinelUrl] } }, namespace, commandTimeoutMs });
  stores.push(store);
  return store;
}

test("sentinel: the store finds the master through the sentinel and admits exactly the limit", async (t) => {
  if (await skipUnlessSentinel(t)) return;
  const namespace = `tollgate-test:${randomUUID()}:`;
  const store = open(namespace);
  const counter = { key: "u_s:requests-day:0", limit: 50, consume: true, expiresAt: Date.now() + 60_000 };
  const results = await Promise.all(Array.from({ length: 200 }, () => store.hit([counter])));
  assert.equal(results.filter((r) => r.admitted).length, 50);
  assert.equal((await redisCli(await group!.masterPort(), "get", `${namespace}{u_s}:requests-day:0`)).trim(), "50");
});

test("sentinel: after a failover the store writes to the new master; no count is lost on the way", async (t) => {
  if (await skipUnlessSentinel(t)) return;
  const namespace = `tollgate-test:${randomUUID()}:`;
  const store = open(namespace, 1000);
  const counter = { key: "u_f:requests-day:0", limit: 1000, consume: true, expiresAt: Date.now() + 60_000 };
  for (let i = 1; i <= 3; i++) assert.deepEqual((await store.hit([counter])).counts, [i]);
  const oldMaster = await group!.masterPort();
  // The replica has every increment before the switch (SENTINEL FAILOVER does not wait for it).
  await redisCli(oldMaster, "wait", "1", "2000");

  // Checks go on, one at a time, through the failover.
  const counts: number[] = [];
  let switching = true;
  const during = (async () => {
    while (switching) {
      const r = await store.hit([counter]).catch(() => undefined);
      if (r) counts.push(r.counts[0]!);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  const newMaster = await group!.failover();
  assert.notEqual(newMaster, oldMaster);
  // Reconnected: checks succeed on the new master (once it has a replica to acknowledge them: the old master, demoted).
  const failedOverAt = counts.length;
  const key = `${namespace}{u_f}:requests-day:0`;
  await until("a check on the new master", async () => counts.length > failedOverAt && Number(await redisCli(newMaster, "get", key)) >= counts.at(-1)!, 30_000);
  switching = false;
  await during;
  // From where the old master was, always up: a count that went back would let a client past its limit. (It may
  // skip: a check that failed for want of a replica's acknowledgement may still have counted.)
  assert.equal(counts[0], 4, `counts: ${counts.join(", ")}`);
  assert.ok(
    counts.every((c, i) => i === 0 || c > counts[i - 1]!),
    `counts: ${counts.join(", ")}`,
  );
  assert.match(await redisCli(oldMaster, "role"), /^slave/);
});

test("sentinel with passwords: the sentinels' own (sentinel.password) and the servers' (password); a wrong or missing one fails the check, never naming it", async (t) => {
  if (await skipUnlessSentinel(t)) return;
  const [serverPassword, sentinelPassword] = ["srv-Pw-83kd", "snt-Pw-19xq"];
  const secured = await throwawaySentinel({ password: serverPassword, sentinelPassword });
  try {
    const namespace = `tollgate-test:${randomUUID()}:`;
    const storeWith = (sentinelSecret: string | undefined, serverSecret: string | undefined, commandTimeoutMs = 4000) => {
      const store = createRedisQuotaStore({
        location: { sentinel: { name: secured.name, nodes: [secured.sentinelUrl], password: sentinelSecret }, password: serverSecret },
        namespace,
        commandTimeoutMs,
      });
      stores.push(store);
      return store;
    };
    const counter = { key: "u_p:requests-day:0", limit: 5, consume: true, expiresAt: Date.now() + 60_000 };
    const store = storeWith(sentinelPassword, serverPassword);
    const results = await Promise.all(Array.from({ length: 20 }, () => store.hit([counter])));
    assert.equal(results.filter((r) => r.admitted).length, 5);

    for (const [what, refused] of [
      ["a wrong sentinel password", storeWith("not-the-sentinels", serverPassword, 1000)],
      ["no sentinel password", storeWith(undefined, serverPassword, 1000)],
      ["a wrong server password", storeWith(sentinelPassword, "not-the-servers", 1000)],
    ] as const) {
      const failure = await refused.hit([counter]).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.ok(failure instanceof Error, `${what}: the check must fail (closed: 503), not count`);
      for (const secret of [serverPassword, sentinelPassword, "not-the-sentinels", "not-the-servers"]) {
        assert.ok(!failure.message.includes(secret), `${what}: ${failure.message}`);
      }
    }
  } finally {
    await secured.stop();
  }
});
