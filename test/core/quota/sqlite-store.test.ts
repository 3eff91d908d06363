import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { openSqliteQuotaStore } from "../../../src/core/quota/stores/sqlite.js";

const drivers = ["node:sqlite", "better-sqlite3"] as const;

async function available(driver: (typeof drivers)[number]): Promise<boolean> {
  try {
    await (await openSqliteQuotaStore({ dbPath: ":memory:", driver, sweepIntervalMs: 0 })).close();
    return true;
  } catch {
    return false;
  }
}

for (const driver of drivers) {
  test(`${driver}: a request counter admits exactly its limit, then refuses without counting`, async (t) => {
    if (!(await available(driver))) return t.skip(`${driver} is not available in ${process.version}`);
    const store = await openSqliteQuotaStore({ dbPath: ":memory:", driver, sweepIntervalMs: 0 });
    const counter = { key: "u_a:requests-day:0", limit: 3, consume: true, expiresAt: Date.now() + 60_000 };
    const results = [];
    for (let i = 0; i < 5; i++) results.push(await store.hit([counter]));
    assert.deepEqual(results.map((r) => r.admitted), [true, true, true, false, false]);
    assert.deepEqual(results.map((r) => r.counts[0]), [1, 2, 3, 3, 3]);
    await store.close();
  });

  test(`${driver}: several limits are all or nothing`, async (t) => {
    if (!(await available(driver))) return t.skip(`${driver} is not available in ${process.version}`);
    const store = await openSqliteQuotaStore({ dbPath: ":memory:", driver, sweepIntervalMs: 0 });
    const exp = Date.now() + 60_000;
    const second = { key: "c:requests-second:0", limit: 2, consume: true, expiresAt: exp };
    const day = { key: "c:requests-day:0", limit: 10, consume: true, expiresAt: exp };
    assert.equal((await store.hit([second, day])).admitted, true);
    assert.equal((await store.hit([second, day])).admitted, true);
    const refused = await store.hit([second, day]);
    assert.equal(refused.admitted, false);
    // The day counter was not charged for the refused request.
    assert.deepEqual(refused.counts, [2, 2]);
    await store.close();
  });

  test(`${driver}: a token budget is read, not consumed, and refuses once used up`, async (t) => {
    if (!(await available(driver))) return t.skip(`${driver} is not available in ${process.version}`);
    const store = await openSqliteQuotaStore({ dbPath: ":memory:", driver, sweepIntervalMs: 0 });
    const exp = Date.now() + 60_000;
    const tokens = { key: "c:tokens-day:0", limit: 100, consume: false, expiresAt: exp };
    assert.deepEqual(await store.hit([tokens]), { admitted: true, counts: [0] });
    await store.add("c:tokens-day:0", 60, exp);
    assert.deepEqual(await store.hit([tokens]), { admitted: true, counts: [60] });
    await store.add("c:tokens-day:0", 50, exp);
    assert.deepEqual(await store.hit([tokens]), { admitted: false, counts: [110] });
    await store.close();
  });

  test(`${driver}: the sweep deletes windows that have ended and keeps the others`, async (t) => {
    if (!(await available(driver))) return t.skip(`${driver} is not available in ${process.version}`);
    const store = await openSqliteQuotaStore({ dbPath: ":memory:", driver, sweepIntervalMs: 0 });
    await store.hit([{ key: "old", limit: 5, consume: true, expiresAt: 1000 }]);
    await store.hit([{ key: "new", limit: 5, consume: true, expiresAt: 5000 }]);
    assert.equal(await store.size(), 2);
    assert.equal(await store.sweep(2000), 1);
    assert.equal(await store.size(), 1);
    await store.close();
  });
}

test("two stores on one file share the counters", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-"));
  try {
    const a = await openSqliteQuotaStore({ dbPath: join(dir, "q.db"), sweepIntervalMs: 0 });
    const b = await openSqliteQuotaStore({ dbPath: join(dir, "q.db"), sweepIntervalMs: 0 });
    const counter = { key: "shared", limit: 3, consume: true, expiresAt: Date.now() + 60_000 };
    const admitted = [];
    for (let i = 0; i < 3; i++) admitted.push((await a.hit([counter])).admitted, (await b.hit([counter])).admitted);
    assert.equal(admitted.filter(Boolean).length, 3);
    await a.close();
    await b.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a namespace keeps two configurations' counters apart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-"));
  try {
    const a = await openSqliteQuotaStore({ dbPath: join(dir, "q.db"), namespace: "a:", sweepIntervalMs: 0 });
    const b = await openSqliteQuotaStore({ dbPath: join(dir, "q.db"), namespace: "b:", sweepIntervalMs: 0 });
    const counter = { key: "k", limit: 1, consume: true, expiresAt: Date.now() + 60_000 };
    assert.equal((await a.hit([counter])).admitted, true);
    assert.equal((await b.hit([counter])).admitted, true);
    assert.equal((await a.hit([counter])).admitted, false);
    await a.close();
    await b.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("in its thread (the default) and in the caller's, the store counts alike; checks asked before close() are answered", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-thread-"));
  try {
    for (const thread of [true, false]) {
      const store = await openSqliteQuotaStore({ dbPath: join(dir, `q-${thread}.db`), sweepIntervalMs: 0, thread });
      const counter = { key: "u_a:requests-day:0", limit: 30, consume: true, expiresAt: Date.now() + 60_000 };
      // 40 checks in one turn: one transaction, each seeing the ones before it.
      const asked = Array.from({ length: 40 }, () => store.hit([counter]));
      const closed = store.close();
      const results = await Promise.all(asked);
      await closed;
      assert.deepEqual(results.map((r) => r.admitted), [...Array(30).fill(true), ...Array(10).fill(false)], `thread: ${thread}`);
      assert.deepEqual(results.slice(0, 30).map((r) => r.counts[0]), Array.from({ length: 30 }, (_, i) => i + 1));
      await assert.rejects(store.hit([counter]), /quota store is closed/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a file that cannot be opened fails the open with SQLite's reason, from the thread as in the caller's", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-quota-thread-"));
  try {
    // A folder where the file should be: SQLite cannot open it.
    mkdirSync(join(dir, "q.db"));
    for (const thread of [true, false]) {
      const failure = await openSqliteQuotaStore({ dbPath: join(dir, "q.db"), sweepIntervalMs: 0, thread }).then(
        () => undefined,
        (err: unknown) => err as Error,
      );
      assert.ok(failure instanceof Error, `thread: ${thread}`);
      assert.match(failure.message, /unable to open|directory|not a database/i);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
