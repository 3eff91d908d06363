/**
 * The usage recorder against a real SQLite record store: requests are
 * summed in memory and written in batches, a failing store keeps them until
 * it recovers, and past the bound they are dropped and counted, never
 * failing the caller.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { createLogger } from "../../../src/core/log.js";
import { openRecordStore } from "../../../src/core/stores/index.js";
import type { RecordStore, UsageDelta } from "../../../src/core/stores/types.js";
import { createPricing } from "../../../src/core/usage/pricing.js";
import { createUsageRecorder, type UsageEntry } from "../../../src/core/usage/recorder.js";

const dir = mkdtempSync(join(tmpdir(), "tollgate-usage-recorder-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let serial = 0;
const log = createLogger("silent");
const T0 = Date.UTC(2026, 11, 6, 5, 30);
const window = { from: new Date(T0 - 86_400_000), to: new Date(T0 + 86_400_000) };

const entry = (more: Partial<UsageEntry> = {}): UsageEntry => ({
  principal: "alice",
  keyId: "key_1",
  model: "m1",
  upstream: "default",
  requests: 1,
  promptTokens: 2,
  completionTokens: 4,
  costNanos: 10,
  ...more,
});

async function withStore(work: (store: RecordStore) => Promise<void>): Promise<void> {
  const store = await openRecordStore({ type: "sqlite", db_path: join(dir, `r-${++serial}.db`) });
  try {
    await work(store);
  } finally {
    await store.close();
  }
}

test("entries of one hour and row are summed in memory and written as one row by flush", async () => {
  await withStore(async (store) => {
    const writes: number[] = [];
    const recorder = createUsageRecorder({ store: { recordUsage: (d) => (writes.push(d.length), store.recordUsage(d)) }, log, now: () => T0, flushMs: 60_000 });
    for (let i = 0; i < 50; i++) recorder.record(entry());
    recorder.record(entry({ model: "m2" }));
    assert.equal(recorder.pending(), 2);
    await recorder.flush();
    assert.deepEqual(writes, [2]);
    assert.deepEqual(await store.usage({ groupBy: ["model"], ...window }), [
      { model: "m1", requests: 50, prompt_tokens: 100, completion_tokens: 200, cost: 500 / 1e9 },
      { model: "m2", requests: 1, prompt_tokens: 2, completion_tokens: 4, cost: 10 / 1e9 },
    ]);
    await recorder.close();
  });
});

test("what is recorded reaches the store within a second, without a flush being asked", async () => {
  await withStore(async (store) => {
    const recorder = createUsageRecorder({ store, log });
    recorder.record(entry());
    await new Promise((resolve) => setTimeout(resolve, 1300));
    assert.equal((await store.usage({ groupBy: [], from: new Date(0), to: new Date(Date.now() + 3_600_000) }))[0]?.requests, 1);
    await recorder.close();
  });
});

test("while the store fails, usage is kept and written once it answers again, nothing lost or doubled", async () => {
  await withStore(async (store) => {
    let down = true;
    const flaky: Pick<RecordStore, "recordUsage"> = { recordUsage: (d: readonly UsageDelta[]) => (down ? Promise.reject(new Error("store down")) : store.recordUsage(d)) };
    const recorder = createUsageRecorder({ store: flaky, log, now: () => T0, flushMs: 60_000 });
    recorder.record(entry());
    await recorder.flush();
    recorder.record(entry());
    await recorder.flush();
    assert.equal(recorder.pending(), 1);
    down = false;
    await recorder.flush();
    assert.equal(recorder.pending(), 0);
    assert.equal((await store.usage({ groupBy: [], ...window }))[0]?.requests, 2);
    await recorder.close();
  });
});

test("past the bound, rows are dropped and counted while the store is down; record() never throws", async () => {
  const dropped: number[] = [];
  const recorder = createUsageRecorder({
    store: { recordUsage: () => Promise.reject(new Error("store down")) },
    log,
    now: () => T0,
    flushMs: 60_000,
    maxPendingRows: 3,
    onDropped: (n) => dropped.push(n),
  });
  for (const principal of ["a", "b", "c", "d", "e"]) recorder.record(entry({ principal }));
  assert.equal(recorder.pending(), 3);
  assert.equal(recorder.dropped, 2);
  await recorder.flush();
  assert.equal(recorder.pending(), 3);
  assert.deepEqual(dropped, [1, 1]);
  await recorder.close();
});

test("closing writes what is held (SIGTERM drains into the store)", async () => {
  await withStore(async (store) => {
    const recorder = createUsageRecorder({ store, log, now: () => T0, flushMs: 60_000 });
    recorder.record(entry());
    await recorder.close();
    assert.equal((await store.usage({ groupBy: [], ...window }))[0]?.requests, 1);
  });
});

test("prices are per million tokens, input and output; '*' prices the rest; no price and no '*' costs 0", () => {
  const priced = createPricing({ currency: "USD", models: { big: { input: 0.6, output: 0.8 }, "*": { input: 0.1, output: 0.2 } } });
  assert.equal(priced.costNanos("big", 1_000_000, 0), 600_000_000);
  assert.equal(priced.costNanos("big", 1000, 500), 600_000 + 400_000);
  assert.equal(priced.costNanos("other", 10, 10), 1000 + 2000);
  assert.equal(priced.costNanos(undefined, 10, 0), 1000);
  const unpriced = createPricing({ currency: "EUR", models: { big: { input: 1, output: 1 } } });
  assert.equal(unpriced.costNanos("other", 1000, 1000), 0);
});
