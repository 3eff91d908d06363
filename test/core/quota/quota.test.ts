import assert from "node:assert/strict";
import { test } from "node:test";
import { BudgetExceededError, QuotaExceededError, QuotaUnavailableError } from "../../../src/core/errors.js";
import { parseConfig } from "../../../src/core/config/load.js";
import { anonymousAddress, clientKey } from "../../../src/core/quota/client-key.js";
import { quotaFromConfig } from "../../../src/core/quota/from-config.js";
import { compileLimits, windowEnd, windowStart } from "../../../src/core/quota/limits.js";
import { createQuota } from "../../../src/core/quota/quota.js";
import type { QuotaStore } from "../../../src/core/quota/store.js";
import { openSqliteQuotaStore } from "../../../src/core/quota/stores/sqlite.js";
import { parseTrustedProxies } from "../../../src/core/providers/upstream-header.js";
import { makeUser } from "../../../src/core/user.js";
import { refusal } from "../../support/refusal.js";
import { captureLog } from "../../support/log.js";

const alice = makeUser("alice", { roles: ["user"] });
const anon = (address: string) => ({ user: undefined, remoteAddress: address, headers: {} });
const as = (user: ReturnType<typeof makeUser>) => ({ user, remoteAddress: "127.0.0.1", headers: {} });

function memoryStore() {
  return openSqliteQuotaStore({ dbPath: ":memory:", sweepIntervalMs: 0 });
}

test("windows are aligned to the epoch: a day starts at 00:00 UTC", () => {
  const t = Date.UTC(2026, 10, 25, 15, 30, 12, 345);
  assert.equal(windowStart("day", t), Date.UTC(2026, 10, 25));
  assert.equal(windowEnd("day", t), Date.UTC(2026, 10, 26));
  assert.equal(windowStart("second", t), t - 345);
  assert.equal(windowStart("minute", t), t - 12_345);
});

test("a month window is the UTC calendar month, whatever its length", () => {
  assert.equal(windowStart("month", Date.UTC(2026, 1, 28, 23, 59, 59, 999)), Date.UTC(2026, 1, 1));
  assert.equal(windowEnd("month", Date.UTC(2026, 1, 28, 23, 59, 59, 999)), Date.UTC(2026, 2, 1));
  assert.equal(windowStart("month", Date.UTC(2026, 2, 1)), Date.UTC(2026, 2, 1));
  assert.equal(windowEnd("month", Date.UTC(2026, 11, 31, 12)), Date.UTC(2027, 0, 1));
});

test("a quota limit per month counts until the 1st of the next month, 00:00 UTC", async () => {
  let now = Date.UTC(2026, 3, 30, 23, 59);
  const quota = createQuota({
    store: await memoryStore(),
    anonymous: { name: "anonymous", limits: [] },
    authenticated: { name: "authenticated", limits: compileLimits([{ requests: 1, period: "month" }]) },
    now: () => now,
  });
  try {
    await quota.check(as(alice));
    await assert.rejects(quota.check(as(alice)), (err: Error & { retryAfterSeconds?: number }) => err.retryAfterSeconds === 60);
    now = Date.UTC(2026, 4, 1);
    await quota.check(as(alice));
  } finally {
    await quota.close();
  }
});

test("limits are named by unit and period, repeats numbered", () => {
  const names = compileLimits([
    { requests: 10, period: "second" },
    { tokens: 5, period: "day" },
    { requests: 20, period: "second" },
  ]).map((l) => l.name);
  assert.deepEqual(names, ["requests-second", "tokens-day", "requests-second-2"]);
});

test("the client key is a hash of the principal, never the principal or a token", () => {
  const key = clientKey(alice, undefined);
  assert.match(key, /^u_[A-Za-z0-9_-]{22}$/);
  assert.ok(!key.includes("alice"));
  assert.equal(clientKey(makeUser("alice", { roles: ["other"] }), "10.0.0.1"), key);
  assert.notEqual(clientKey(makeUser("bob"), undefined), key);
  assert.notEqual(clientKey(undefined, "10.0.0.1"), clientKey(undefined, "10.0.0.2"));
});

test("forwarded addresses are believed only from trusted proxies, walked from the right", () => {
  const trusted = parseTrustedProxies(["10.0.0.0/8"]);
  const xff = { "x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.0.0.3" };
  assert.equal(anonymousAddress("192.0.2.7", xff, trusted), "192.0.2.7");
  assert.equal(anonymousAddress("10.0.0.2", xff, trusted), "203.0.113.9");
  assert.equal(anonymousAddress("::ffff:10.0.0.2", xff, trusted), "203.0.113.9");
  assert.equal(anonymousAddress("10.0.0.2", { forwarded: 'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"' }, trusted), "2001:db8::1");
  assert.equal(anonymousAddress("10.0.0.2", {}, trusted), "10.0.0.2");
  assert.equal(anonymousAddress("10.0.0.2", xff, undefined), "10.0.0.2");
});

test("over the limit: 429 Quota exceeded with Retry-After and RateLimit fields", async () => {
  const now = () => Date.UTC(2026, 0, 1, 0, 0, 30);
  const quota = createQuota({
    store: await memoryStore(),
    anonymous: { name: "anonymous", limits: compileLimits([{ requests: 2, period: "minute" }]) },
    authenticated: { name: "authenticated", limits: [] },
    now,
  });
  const first = await quota.check(anon("10.0.0.1"));
  assert.equal(first.headers["ratelimit-policy"], '"requests-minute";q=2;w=60');
  assert.equal(first.headers.ratelimit, '"requests-minute";r=1;t=30');
  await quota.check(anon("10.0.0.1"));
  const err = await refusal(quota.check(anon("10.0.0.1")));
  assert.ok(err instanceof QuotaExceededError);
  assert.equal(err.status, 429);
  assert.equal(err.message, "Quota exceeded");
  assert.equal(err.code, "rate_limit_exceeded");
  assert.equal(err.headers["retry-after"], "30");
  assert.equal(err.headers.ratelimit, '"requests-minute";r=0;t=30');
  // Another address has its own quota.
  await quota.check(anon("10.0.0.2"));
  await quota.close();
});

test("the first matching tier replaces `limits`; others get the default limits", async () => {
  const config = parseConfig(`
server:
  quota:
    kvstore: {type: sqlite, db_path: ":memory:"}
    authenticated_max_requests: 1000
    limits: [{requests: 1, period: minute}]
    tiers:
      - {name: premium, when: user with premium in roles, limits: [{requests: 3, period: minute}, {tokens: 500, period: day}]}
`);
  const quota = await quotaFromConfig(config.server.quota!, { log: captureLog().log });
  const premium = makeUser("carol", { roles: ["premium"] });
  const grant = await quota.check(as(premium));
  assert.equal(grant.headers["ratelimit-policy"], '"requests-day";q=1000;w=86400, "requests-minute";q=3;w=60, "tokens-day";q=500;w=86400;qu="tokens"');
  assert.ok(grant.recordTokens);
  await quota.check(as(premium));
  await quota.check(as(premium));
  await refusal(quota.check(as(premium)));
  const plain = await quota.check(as(alice));
  assert.equal(plain.recordTokens, undefined);
  await refusal(quota.check(as(alice)));
  await quota.close();
});

test("a token budget refuses the next request once usage reaches it", async () => {
  const quota = createQuota({
    store: await memoryStore(),
    anonymous: { name: "anonymous", limits: [] },
    authenticated: { name: "authenticated", limits: compileLimits([{ tokens: 100, period: "day" }]) },
  });
  const grant = await quota.check(as(alice));
  await grant.recordTokens!(99);
  const next = await quota.check(as(alice));
  assert.match(next.headers.ratelimit!, /"tokens-day";r=1;/);
  await next.recordTokens!(5);
  const err = await refusal(quota.check(as(alice)));
  assert.equal(err.status, 429);
  await quota.close();
});

const failing: QuotaStore = {
  hit: () => Promise.reject(new Error("store down")),
  add: () => Promise.reject(new Error("store down")),
  ping: () => Promise.reject(new Error("store down")),
  close: async () => undefined,
};

test("failure_mode closed: a failing store answers 503, never a 500", async () => {
  const errors: string[] = [];
  const quota = createQuota({
    store: failing,
    anonymous: { name: "anonymous", limits: compileLimits([{ requests: 1, period: "day" }]) },
    authenticated: { name: "authenticated", limits: [] },
    onStoreError: (_err, outcome) => errors.push(outcome),
  });
  const err = await refusal(quota.check(anon("10.0.0.1")));
  assert.ok(err instanceof QuotaUnavailableError);
  assert.equal(err.status, 503);
  assert.deepEqual(errors, ["refused"]);
});

test("failure_mode open: a failing store lets the request through, reported and counted", async () => {
  const errors: string[] = [];
  const quota = createQuota({
    store: failing,
    failureMode: "open",
    anonymous: { name: "anonymous", limits: compileLimits([{ requests: 1, period: "day" }]) },
    authenticated: { name: "authenticated", limits: [] },
    onStoreError: (_err, outcome) => errors.push(outcome),
  });
  const grant = await quota.check(anon("10.0.0.1"));
  assert.deepEqual(grant.headers, {});
  assert.equal(quota.failedOpen, 1);
  assert.deepEqual(errors, ["admitted"]);
});

test("Llama Stack's quota config is accepted unchanged", () => {
  const config = parseConfig(`
server:
  quota:
    kvstore:
      type: sqlite
      db_path: ./quotas.db
    anonymous_max_requests: 100
    authenticated_max_requests: 1000
    period: day
`);
  assert.deepEqual(config.server.quota!.kvstore, { type: "sqlite", db_path: "./quotas.db" });
  const redis = parseConfig(`
server:
  quota:
    kvstore: {type: redis, host: 127.0.0.1, port: 6379, namespace: llama}
`);
  assert.equal(redis.server.quota!.kvstore.type, "redis");
});

test("invalid quota settings are refused with their place", () => {
  assert.throws(
    () => parseConfig("server:\n  quota:\n    period: week\n"),
    /server\.quota\.period/,
  );
  assert.throws(
    () => parseConfig("server:\n  quota:\n    tiers: [{name: x, when: user is owner, limits: []}]\n"),
    /server\.quota\.tiers\[0\]\.when: a tier condition is about the user only/,
  );
  assert.throws(
    () => parseConfig("server:\n  quota:\n    kvstore: {type: redis, url: 'redis://h', host: h}\n"),
    /server\.quota\.kvstore\.host: use one of url, host\/port, cluster or sentinel, not url and host/,
  );
  assert.throws(() => parseConfig("server:\n  quota:\n    kvstore: {type: postgres}\n"), /server\.quota\.kvstore\.type/);
  assert.throws(() => parseConfig("server:\n  quota:\n    limits: [{requests: 1, tokens: 2, period: day}]\n"), /server\.quota\.limits/);
});

test("a spend budget admits while the spend is below it and refuses with budget_exceeded once reached", async () => {
  const quota = createQuota({
    store: await memoryStore(),
    anonymous: { name: "anonymous", limits: [] },
    authenticated: { name: "authenticated", limits: compileLimits([{ spend: 0.01, period: "month" }]) },
  });
  try {
    const grant = await quota.check(as(alice));
    assert.equal(grant.headers["ratelimit-policy"], undefined, "a budget is not a rate: no RateLimit fields");
    await grant.recordSpend!(6_000_000);
    // Below the budget (0.006 of 0.01): admitted, and this answer crosses it.
    await (await quota.check(as(alice))).recordSpend!(6_000_000);
    await assert.rejects(quota.check(as(alice)), (err: unknown) => err instanceof BudgetExceededError && err.code === "budget_exceeded" && err.type === "rate_limit_error" && err.status === 429);
    // Another principal has a budget of its own.
    await quota.check(as(makeUser("bob")));
  } finally {
    await quota.close();
  }
});

test("an API key's own limits apply on top of its principal's, counted per key", async () => {
  const quota = createQuota({
    store: await memoryStore(),
    anonymous: { name: "anonymous", limits: [] },
    authenticated: { name: "authenticated", limits: compileLimits([{ requests: 3, period: "day" }]) },
  });
  const withKey = (id: string, limits: object[]) => ({ user: { ...alice, apiKey: { id, limits: limits as never } }, remoteAddress: "127.0.0.1", headers: {} });
  try {
    const limited = withKey("key_small", [{ requests: 1, period: "day" }]);
    await quota.check(limited);
    await assert.rejects(quota.check(limited), (err: unknown) => err instanceof QuotaExceededError && !(err instanceof BudgetExceededError));
    // Another key of the same principal is not bound by that key's limit, only by the principal's 3 a day.
    await quota.check(withKey("key_other", []));
    await quota.check(withKey("key_other", []));
    await assert.rejects(quota.check(withKey("key_other", [])), QuotaExceededError);
  } finally {
    await quota.close();
  }
});

test("a key's spend budget refuses the key alone with budget_exceeded", async () => {
  const quota = createQuota({ store: await memoryStore(), anonymous: { name: "anonymous", limits: [] }, authenticated: { name: "authenticated", limits: [] } });
  const key = { user: { ...alice, apiKey: { id: "key_b", limits: [{ spend: 1, period: "day" as const }] } }, remoteAddress: "127.0.0.1", headers: {} };
  try {
    await (await quota.check(key)).recordSpend!(1_000_000_000);
    await assert.rejects(quota.check(key), BudgetExceededError);
    assert.deepEqual(await quota.check(as(alice)), { headers: {}, recordTokens: undefined, recordSpend: undefined });
  } finally {
    await quota.close();
  }
});
