import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { StoreUnavailableError } from "../../../src/core/errors.js";
import { createLogger } from "../../../src/core/log.js";
import { createRedisQuotaStore } from "../../../src/core/quota/stores/redis.js";
import { openSqliteQuotaStore } from "../../../src/core/quota/stores/sqlite.js";
import { openPostgresRecordStore } from "../../../src/core/stores/postgres.js";
import { resilientRecordStore } from "../../../src/core/stores/resilient.js";
import { openSqliteDatabase, type SqliteDriverName } from "../../../src/core/stores/sqlite-driver.js";
import { openSqliteRecordStore } from "../../../src/core/stores/sqlite.js";
import { canMakeDiskFaults, makeImmutable, smallDisk, tempFolder } from "../../support/faulty-disk.js";
import { scopedPostgres } from "../../support/postgres.js";
import { throwawayRedis } from "../../support/redis-server.js";
import { requireService } from "../../support/services.js";
import { startTcpProxy } from "../../support/tcp-proxy.js";

/**
 * Stores that stop working under the gateway: a SQLite file made immutable
 * or on a full disk, a PostgreSQL that stalls or goes away, a Redis that
 * refuses writes. Each is an error the gateway can answer with 503, reported
 * within ~2 s, and `ping()` (behind /ready) fails whenever writes fail.
 */

const FIXTURE = fileURLToPath(new URL("./fixtures/write-after-fault.ts", import.meta.url));
const silent = createLogger("silent");

/** The drivers this runtime loads; a missing one is skipped by design (node:sqlite needs Node 22.5+), and said. */
async function drivers(t: TestContext): Promise<SqliteDriverName[]> {
  const found: SqliteDriverName[] = [];
  for (const driver of ["node:sqlite", "better-sqlite3"] as const) {
    try {
      (await openSqliteDatabase(":memory:", { driver })).close();
      found.push(driver);
    } catch {
      t.diagnostic(`${driver} does not load in Node ${process.version}: not covered in this run`);
    }
  }
  return found;
}

for (const kind of ["record", "quota"] as const) {
  test(`a ${kind} store whose files become immutable fails its writes and its ping, and the process lives on (no SIGBUS)`, async (t) => {
    if (!canMakeDiskFaults(t, "chattr")) return;
    for (const driver of await drivers(t)) {
      const dir = tempFolder();
      try {
        const child = spawnSync(process.execPath, ["--import", "tsx", FIXTURE, kind, driver, dir], { encoding: "utf8", timeout: 30_000 });
        // Before the fix: signal SIGBUS, status null, nothing printed.
        assert.equal(child.signal, null, `${driver}: the process died with ${child.signal}\n${child.stderr}`);
        assert.equal(child.status, 0, `${driver}: ${child.stderr}`);
        const result = JSON.parse(child.stdout.trim().split("\n").at(-1)!) as Record<string, string>;
        assert.equal(result.before, "ok", driver);
        assert.match(result.after!, /^error: /, driver);
        assert.match(result.ping!, /^error: /, `${driver}: ping must fail when writes fail`);
        assert.equal(result.recovered, "ok", `${driver}: writes work again once the files are writable`);
      } finally {
        // A child that died (SIGBUS) never undid its chattr +i: undo it here, or the folder stays.
        spawnSync("chattr", ["-R", "-i", dir], { stdio: "ignore" });
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });
}

test("on a full disk the record store and the quota store reject writes and ping, and recover when there is room", async (t) => {
  if (!canMakeDiskFaults(t, "mount")) return;
  const disk = smallDisk(512);
  try {
    const records = await openSqliteRecordStore(join(disk.dir, "tollgate.db"));
    const quota = await openSqliteQuotaStore({ dbPath: join(disk.dir, "quota.db"), sweepIntervalMs: 0 });
    try {
      await records.putOwner({ type: "file", id: "file-0", principal: "alice", attributes: {}, createdAt: 1 });
      await records.ping();
      await quota.ping();
      disk.fill();
      // Rows big enough to need new pages: the disk has none to give.
      const big = "x".repeat(8192);
      await assert.rejects(
        (async () => {
          for (let i = 1; i < 64; i++) await records.putOwner({ type: "file", id: `file-${i}-${big}`, principal: "alice", attributes: {}, createdAt: 1 });
        })(),
        /full|disk|I\/O/i,
      );
      await assert.rejects(records.ping(), "the record store's ping must fail on a full disk");
      await assert.rejects(quota.ping(), "the quota store's ping must fail on a full disk");
      disk.free();
      await records.ping();
      await quota.ping();
      assert.equal((await records.findOwner("file", "file-0"))?.principal, "alice");
    } finally {
      await records.close();
      await quota.close();
    }
  } finally {
    disk.close();
  }
});

test("an immutable SQLite record file makes ping fail where SELECT 1 still answers", async (t) => {
  if (!canMakeDiskFaults(t, "chattr")) return;
  const dir = tempFolder();
  const store = await openSqliteRecordStore(join(dir, "tollgate.db"));
  try {
    await store.ping();
    const undo = makeImmutable(dir);
    try {
      await assert.rejects(store.ping());
    } finally {
      undo();
    }
    await store.ping();
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a stalled PostgreSQL answers store_unavailable within ~2 s, and the store works again when the network does", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const scoped = await scopedPostgres(url, "stall");
  const target = new URL(url);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  const store = resilientRecordStore(await openPostgresRecordStore(proxy.via(scoped.url)), { log: silent });
  try {
    await store.putOwner({ type: "file", id: "file-1", principal: "alice", attributes: {}, createdAt: 1 });
    proxy.pause();
    let started = Date.now();
    await assert.rejects(store.findOwner("file", "file-1"), StoreUnavailableError);
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
    started = Date.now();
    await assert.rejects(store.ping(), StoreUnavailableError);
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
    proxy.cut();
    started = Date.now();
    await assert.rejects(store.findOwners("file", ["file-1"]), StoreUnavailableError);
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
    proxy.resume();
    assert.equal((await store.findOwner("file", "file-1"))?.principal, "alice");
  } finally {
    await store.close();
    await proxy.close();
    await scoped.drop();
  }
});

test("an owner write that fails is held pending: lookups see it at once, and it lands in the store when PostgreSQL is back", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const scoped = await scopedPostgres(url, "pending");
  const target = new URL(url);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  const store = resilientRecordStore(await openPostgresRecordStore(proxy.via(scoped.url)), { log: silent, retryMs: 100 });
  try {
    proxy.cut();
    await assert.rejects(store.ensureWritable(), StoreUnavailableError);
    await assert.rejects(store.putOwner({ type: "file", id: "file-9", principal: "alice", attributes: { roles: ["x"] }, createdAt: 1 }), StoreUnavailableError);
    assert.equal(store.pendingOwners(), 1);
    // While the store is down, the owner is still known: the file is never unowned.
    assert.equal((await store.findOwner("file", "file-9"))?.principal, "alice");
    assert.equal((await store.findOwners("file", ["file-9"])).get("file-9")?.principal, "alice");
    proxy.resume();
    const deadline = Date.now() + 10_000;
    while (store.pendingOwners() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const { rows } = await scoped.admin.query(`SELECT principal FROM "${scoped.schema}".tollgate_owners WHERE id = 'file-9'`);
    assert.deepEqual(rows, [{ principal: "alice" }]);
  } finally {
    await store.close();
    await proxy.close();
    await scoped.drop();
  }
});

test("PostgreSQL unreachable at start is refused in one line naming storage.url, without its password", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const target = new URL(url);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  proxy.cut();
  const withPassword = new URL(proxy.via(url));
  withPassword.username = "tollgate";
  withPassword.password = "s3cret-pw";
  try {
    const started = Date.now();
    await assert.rejects(openPostgresRecordStore(withPassword.toString()), (err: Error) => {
      assert.match(err.message, /^storage\.url: cannot use PostgreSQL at postgres:\/\/tollgate:\*\*\*@127\.0\.0\.1:\d+\/test: /);
      assert.doesNotMatch(err.message, /s3cret-pw|\n/);
      return true;
    });
    assert.ok(Date.now() - started < 5000);
  } finally {
    await proxy.close();
  }
});

test("a Redis that refuses writes (maxmemory, noeviction) fails the quota store's ping, though PING answers", async (t) => {
  const redis = await throwawayRedis(["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
  if (!redis) {
    if (process.env.CI === "true") throw new Error("redis-server is not installed; under CI=true this fails the run");
    t.skip("redis-server is not installed");
    return;
  }
  await redis.start();
  const admin = new Redis(redis.url);
  const store = createRedisQuotaStore({ location: { url: redis.url } });
  try {
    await store.ping();
    // Used memory is always over 1 byte: from now on every write is refused with OOM.
    await admin.config("SET", "maxmemory", "1");
    assert.equal(await admin.ping(), "PONG");
    await assert.rejects(store.ping(), /OOM/);
    await admin.config("SET", "maxmemory", "0");
    await store.ping();
  } finally {
    await store.close();
    admin.disconnect();
    await redis.stop();
  }
});
