/**
 * The usage table of the record store, on SQLite and PostgreSQL: additions
 * sum, and the grouped query answers with the admin API's rows.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { openRecordStore } from "../../../src/core/stores/index.js";
import type { RecordStore, UsageDelta } from "../../../src/core/stores/types.js";
import { storageBackends } from "../../support/record-stores.js";

const dir = mkdtempSync(join(tmpdir(), "tollgate-usage-store-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const HOUR = 3_600_000;
/** 2026-12-05T22:00Z: two hours before a UTC day ends. */
const T0 = Date.UTC(2026, 11, 5, 22);

function delta(overrides: Partial<UsageDelta> = {}): UsageDelta {
  return {
    hour: T0,
    principal: "alice",
    keyId: "key_a",
    model: "m1",
    upstream: "default",
    requests: 1,
    promptTokens: 10,
    completionTokens: 5,
    costNanos: 1_500,
    ...overrides,
  };
}

const window = { from: new Date(T0 - 24 * HOUR), to: new Date(T0 + 24 * HOUR) };

for (const backend of storageBackends) {
  describe(`usage in the ${backend.name} record store`, () => {
    async function withStore(t: import("node:test").TestContext, work: (store: RecordStore, open: () => Promise<RecordStore>) => Promise<void>) {
      const place = await backend.prepare(t, dir);
      if (!place) return;
      const open = () => openRecordStore(place.storage);
      const store = await open();
      try {
        await work(store, open);
      } finally {
        await store.close();
        await place.cleanup();
      }
    }

    test("additions to one row sum, within a batch and across writers", async (t) => {
      await withStore(t, async (store, open) => {
        const other = await open();
        try {
          await Promise.all([
            store.recordUsage([delta(), delta({ promptTokens: 1, completionTokens: 2, costNanos: 3 })]),
            other.recordUsage([delta({ requests: 3, costNanos: 500 })]),
            ...Array.from({ length: 10 }, () => other.recordUsage([delta()])),
          ]);
        } finally {
          await other.close();
        }
        assert.deepEqual(await store.usage({ groupBy: ["principal"], ...window }), [
          { principal: "alice", requests: 15, prompt_tokens: 121, completion_tokens: 62, cost: 17_003 / 1e9 },
        ]);
      });
    });

    test("rows are grouped by each field asked, key and model null when absent, day and hour in UTC", async (t) => {
      await withStore(t, async (store) => {
        await store.recordUsage([
          delta(),
          delta({ hour: T0 + HOUR, model: "m2", costNanos: 2_000_000_000 }),
          delta({ hour: T0 + 2 * HOUR, principal: "bob", keyId: undefined, model: undefined, upstream: "vllm" }),
        ]);
        assert.deepEqual(await store.usage({ groupBy: ["day", "model"], ...window }), [
          { day: "2026-12-05", model: "m1", requests: 1, prompt_tokens: 10, completion_tokens: 5, cost: 0.0000015 },
          { day: "2026-12-05", model: "m2", requests: 1, prompt_tokens: 10, completion_tokens: 5, cost: 2 },
          { day: "2026-12-06", model: null, requests: 1, prompt_tokens: 10, completion_tokens: 5, cost: 0.0000015 },
        ]);
        assert.deepEqual(
          (await store.usage({ groupBy: ["principal", "key", "upstream", "hour"], ...window })).map((r) => [r.principal, r.key, r.upstream, r.hour]),
          [
            ["alice", "key_a", "default", "2026-12-05T22:00:00.000Z"],
            ["alice", "key_a", "default", "2026-12-05T23:00:00.000Z"],
            ["bob", null, "vllm", "2026-12-06T00:00:00.000Z"],
          ],
        );
      });
    });

    test("the window takes hours starting from `from` and before `to`, and the principal filter keeps one principal", async (t) => {
      await withStore(t, async (store) => {
        await store.recordUsage([delta({ hour: T0 - HOUR }), delta(), delta({ hour: T0 + HOUR }), delta({ principal: "bob" })]);
        const rows = await store.usage({ groupBy: ["hour"], from: new Date(T0), to: new Date(T0 + HOUR) });
        assert.deepEqual(rows.map((r) => [r.hour, r.requests]), [["2026-12-05T22:00:00.000Z", 2]]);
        assert.deepEqual((await store.usage({ groupBy: [], ...window, principal: "bob" })).map((r) => r.requests), [1]);
      });
    });

    test("with no group the answer is one row of totals, zero when nothing was recorded", async (t) => {
      await withStore(t, async (store) => {
        assert.deepEqual(await store.usage({ groupBy: [], ...window }), [{ requests: 0, prompt_tokens: 0, completion_tokens: 0, cost: 0 }]);
        await store.recordUsage([delta(), delta({ model: "m2" })]);
        assert.deepEqual(await store.usage({ groupBy: [], ...window }), [{ requests: 2, prompt_tokens: 20, completion_tokens: 10, cost: 0.000003 }]);
      });
    });
  });
}
