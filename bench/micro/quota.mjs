#!/usr/bin/env node
// Stage 5 cost: quota checks per second against each store, one process,
// checks awaited one after another (the latency a request pays), plus a
// batch of concurrent checks (what a busy gateway sustains).
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { compileLimits } from "../../dist/core/quota/limits.js";
import { createQuota } from "../../dist/core/quota/quota.js";
import { openSqliteQuotaStore } from "../../dist/core/quota/stores/sqlite.js";
import { createRedisQuotaStore } from "../../dist/core/quota/stores/redis.js";
import { makeUser } from "../../dist/core/user.js";
import { measureAsync, table } from "./_measure.mjs";
import { REDIS_URL, reachable } from "../support.mjs";

const user = makeUser("bench", { roles: ["user"] });
const subject = { user, remoteAddress: "127.0.0.1", headers: {} };
const big = Number.MAX_SAFE_INTEGER;

function quotaOver(store, limits) {
  return createQuota({ store, anonymous: { name: "anonymous", limits: [] }, authenticated: { name: "authenticated", limits: compileLimits(limits) } });
}

const one = [{ requests: big, period: "day" }];
const three = [{ requests: big, period: "second" }, { requests: big, period: "day" }, { tokens: big, period: "day" }];
const rows = [];
const notes = [];
const dir = mkdtempSync(join(tmpdir(), "tollgate-bench-quota-"));
try {
  for (const [label, limits] of [["1 limit", one], ["3 limits", three]]) {
    const store = await openSqliteQuotaStore({ dbPath: join(dir, `q-${label.replace(" ", "")}.db`), sweepIntervalMs: 0 });
    const quota = quotaOver(store, limits);
    rows.push(await measureAsync(`SQLite file, ${label}, sequential`, () => quota.check(subject)));
    await quota.close();
  }
  if (await reachable(REDIS_URL)) {
    for (const [label, limits] of [["1 limit", one], ["3 limits", three]]) {
      const store = createRedisQuotaStore({ location: { url: REDIS_URL }, namespace: `tollgate-bench:${randomUUID()}:` });
      const quota = quotaOver(store, limits);
      rows.push(await measureAsync(`Redis, ${label}, sequential`, () => quota.check(subject)));
      // 50 checks in flight at once, as from 50 concurrent requests: ioredis pipelines them.
      const batch = await measureAsync(`Redis, ${label}, 50 concurrent (per check)`, () => Promise.all(Array.from({ length: 50 }, () => quota.check(subject))));
      rows.push({ name: batch.name, opsPerSec: batch.opsPerSec * 50 });
      await quota.close();
    }
  } else {
    notes.push(`Redis rows skipped: nothing answers at ${new URL(REDIS_URL).host} (set TOLLGATE_BENCH_REDIS_URL).`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log([table("Quota checks", rows), ...notes.map((n) => `\n${n}`)].join("\n"));
