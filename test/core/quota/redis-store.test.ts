import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { Redis } from "ioredis";
import { createRedisQuotaStore } from "../../../src/core/quota/stores/redis.js";
import { requireService } from "../../support/services.js";
import { throwawayRedis } from "../../support/redis-server.js";

const ns = () => `tollgate-test:${randomUUID()}:`;

test("redis: a request counter admits exactly its limit across concurrent checks", async (t) => {
  const url = await requireService(t, "redis");
  if (!url) return;
  const store = createRedisQuotaStore({ location: { url }, namespace: ns() });
  const counter = { key: "u_a:requests-day:0", limit: 50, consume: true, expiresAt: Date.now() + 60_000 };
  const results = await Promise.all(Array.from({ length: 200 }, () => store.hit([counter])));
  assert.equal(results.filter((r) => r.admitted).length, 50);
  await store.close();
});

test("redis: several limits are all or nothing, and counters expire a minute after their window", async (t) => {
  const url = await requireService(t, "redis");
  if (!url) return;
  const namespace = ns();
  const store = createRedisQuotaStore({ location: { url }, namespace });
  const expiresAt = Date.now() + 30_000;
  const second = { key: "c:requests-second:0", limit: 1, consume: true, expiresAt };
  const day = { key: "c:requests-day:0", limit: 10, consume: true, expiresAt };
  assert.deepEqual(await store.hit([second, day]), { admitted: true, counts: [1, 1] });
  assert.deepEqual(await store.hit([second, day]), { admitted: false, counts: [1, 1] });
  const admin = new Redis(url);
  const ttl = await admin.pttl(`${namespace}{c}:requests-day:0`);
  assert.ok(ttl > 85_000 && ttl <= 90_000, `pttl ${ttl}`);
  await admin.quit();
  await store.close();
});

test("redis: checks of a full window that reach Redis after the window ended are still refused", async (t) => {
  const url = await requireService(t, "redis");
  if (!url) return;
  const store = createRedisQuotaStore({ location: { url }, namespace: ns() });
  // The window ends in 50 ms; its checks are computed before that and some arrive after.
  const counter = { key: "late:requests-hour:0", limit: 2, consume: true, expiresAt: Date.now() + 50 };
  assert.equal((await store.hit([counter])).admitted, true);
  assert.equal((await store.hit([counter])).admitted, true);
  await new Promise((r) => setTimeout(r, 100));
  const late = await Promise.all(Array.from({ length: 5 }, () => store.hit([counter])));
  assert.deepEqual(late.map((r) => r.admitted), [false, false, false, false, false]);
  await store.close();
});

test("redis: token budgets are read by checks and grow with add()", async (t) => {
  const url = await requireService(t, "redis");
  if (!url) return;
  const store = createRedisQuotaStore({ location: { url }, namespace: ns() });
  const expiresAt = Date.now() + 60_000;
  const tokens = { key: "c:tokens-day:0", limit: 100, consume: false, expiresAt };
  await store.add("c:tokens-day:0", 70, expiresAt);
  assert.deepEqual(await store.hit([tokens]), { admitted: true, counts: [70] });
  await store.add("c:tokens-day:0", 30, expiresAt);
  assert.deepEqual(await store.hit([tokens]), { admitted: false, counts: [100] });
  await store.close();
});

test("redis: Llama Stack's host/port form and a password work; a down server fails fast", async (t) => {
  const redis = await throwawayRedis(["--requirepass", "s3cret-pw"]);
  if (!redis) return t.skip("redis-server is not installed");
  await redis.start();
  try {
    const store = createRedisQuotaStore({ location: { host: "127.0.0.1", port: redis.port, password: "s3cret-pw" }, namespace: ns() });
    const counter = { key: "k", limit: 2, consume: true, expiresAt: Date.now() + 60_000 };
    assert.equal((await store.hit([counter])).admitted, true);
    const viaUrl = createRedisQuotaStore({ location: { url: `redis://:s3cret-pw@127.0.0.1:${redis.port}/0` }, namespace: ns() });
    assert.equal((await viaUrl.hit([counter])).admitted, true);
    await redis.stop();
    const started = Date.now();
    await assert.rejects(store.hit([counter]));
    assert.ok(Date.now() - started < 2000, "a check against a stopped Redis must fail within the command timeout");
    await store.close();
    await viaUrl.close();
  } finally {
    await redis.stop();
  }
});
