/**
 * Schema migrations of the record store: a store written by the release
 * before migrations is upgraded with every key and owner kept; steps run
 * once, under a lock, however many processes open the store together; a
 * failing step leaves nothing half-done; a store from a newer Tollgate is
 * refused.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { MIGRATIONS, migrateSqlite, SCHEMA_VERSION } from "../../../src/core/stores/migrations.js";
import { openPostgresRecordStore } from "../../../src/core/stores/postgres.js";
import { openSqliteDatabase } from "../../../src/core/stores/sqlite-driver.js";
import { openSqliteRecordStore } from "../../../src/core/stores/sqlite.js";
import type { ApiKeyRecord, OwnerRecord, RecordStore } from "../../../src/core/stores/types.js";
import { scopedPostgres } from "../../support/postgres.js";
import { requireService } from "../../support/services.js";

const dir = mkdtempSync(join(tmpdir(), "tollgate-migrations-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let serial = 0;

/**
 * The schema of release 0.1.0 exactly as its stores created it on open (no
 * version table): tables with IF NOT EXISTS, the rotation columns added by
 * ALTER, the probe table. SQLite's types; PostgreSQL's below.
 */
const RELEASE_0_1_SQLITE = `
CREATE TABLE IF NOT EXISTS tollgate_api_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, principal TEXT NOT NULL,
  attributes TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS tollgate_owners (type TEXT NOT NULL, id TEXT NOT NULL, principal TEXT NOT NULL, attributes TEXT NOT NULL,
  created_at INTEGER NOT NULL, PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS tollgate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
ALTER TABLE tollgate_api_keys ADD COLUMN previous_hash TEXT;
ALTER TABLE tollgate_api_keys ADD COLUMN previous_valid_until INTEGER;
CREATE INDEX IF NOT EXISTS tollgate_api_keys_previous_hash ON tollgate_api_keys (previous_hash);
CREATE TABLE IF NOT EXISTS tollgate_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);`;

const RELEASE_0_1_POSTGRES = RELEASE_0_1_SQLITE.replaceAll("INTEGER", "BIGINT");

/** What release 0.1.0 wrote: an active key, a revoked one, a key rotated within its grace, owners, the issued marker. */
const WRITTEN = {
  keys: [
    ["key_0000000000000001", "a".repeat(64), "tg_aaaaaaa", "alice", '{"roles":["admin"]}', 1_700_000_000_000, null, null, null, null],
    ["key_0000000000000002", "b".repeat(64), "tg_bbbbbbb", "bob", '{"teams":["ml","ops"]}', 1_700_000_001_000, 1_900_000_000_000, 1_700_000_500_000, null, null],
    ["key_0000000000000003", "c".repeat(64), "tg_ccccccc", "carol", "{}", 1_700_000_002_000, null, null, "d".repeat(64), 4_000_000_000_000],
  ],
  owners: [
    ["file", "file-abc", "alice", '{"roles":["admin"]}', 1_700_000_003_000],
    ["vector_store", "vs_1", "bob", "{}", 1_700_000_004_000],
  ],
};

const expectedKeys: ApiKeyRecord[] = [
  { id: "key_0000000000000001", hash: "a".repeat(64), prefix: "tg_aaaaaaa", principal: "alice", attributes: { roles: ["admin"] }, createdAt: 1_700_000_000_000, expiresAt: undefined, revokedAt: undefined, name: undefined, limits: undefined },
  { id: "key_0000000000000002", hash: "b".repeat(64), prefix: "tg_bbbbbbb", principal: "bob", attributes: { teams: ["ml", "ops"] }, createdAt: 1_700_000_001_000, expiresAt: 1_900_000_000_000, revokedAt: 1_700_000_500_000, name: undefined, limits: undefined },
  { id: "key_0000000000000003", hash: "c".repeat(64), prefix: "tg_ccccccc", principal: "carol", attributes: {}, createdAt: 1_700_000_002_000, expiresAt: undefined, revokedAt: undefined, name: undefined, limits: undefined },
];
const expectedOwners: OwnerRecord[] = [
  { type: "file", id: "file-abc", principal: "alice", attributes: { roles: ["admin"] }, createdAt: 1_700_000_003_000 },
  { type: "vector_store", id: "vs_1", principal: "bob", attributes: {}, createdAt: 1_700_000_004_000 },
];

/** Everything an upgraded store must still answer as release 0.1.0 did. */
async function assertKept(store: RecordStore): Promise<void> {
  assert.deepEqual(await store.listApiKeys(), expectedKeys);
  for (const owner of expectedOwners) assert.deepEqual(await store.findOwner(owner.type, owner.id), owner);
  // The rotated key's previous secret still works within its grace.
  assert.equal((await store.findApiKeyByHash("d".repeat(64)))?.id, "key_0000000000000003");
  // Held keys: no first admin key is ever created on this store.
  assert.equal(await store.insertFirstApiKey({ ...expectedKeys[0]!, id: "key_new", hash: "e".repeat(64) }), false);
  // The new columns are there and work on the old rows.
  assert.equal((await store.pageApiKeys({ limit: 1 })).keys[0]?.id, "key_0000000000000003");
  await store.recordUsage([{ hour: 0, principal: "alice", upstream: "default", requests: 1, promptTokens: 0, completionTokens: 0, costNanos: 0 }]);
  // Step 6: an owner remembers the upstream its resource was created through; the old owners have none.
  const routed: OwnerRecord = { type: "file", id: "file-new", principal: "alice", attributes: {}, createdAt: 1_800_000_000_000, upstream: "vllm-big" };
  await store.putOwner(routed);
  assert.deepEqual(await store.findOwner("file", "file-new"), routed);
  assert.deepEqual((await store.findOwners("file", ["file-new", "file-abc"])).get("file-new"), routed);
  assert.equal((await store.findOwner("file", "file-abc"))?.upstream, undefined);
}

async function sqliteFrom(sql: string): Promise<string> {
  const path = join(dir, `store-${++serial}.db`);
  const db = await openSqliteDatabase(path);
  db.exec(sql);
  db.close();
  return path;
}

function sqliteVersions(path: string): Promise<number[]> {
  return openSqliteDatabase(path).then((db) => {
    try {
      return db.prepare("SELECT version FROM tollgate_schema_migrations ORDER BY version").all().map((r) => Number(r.version));
    } finally {
      db.close();
    }
  });
}

const ALL_VERSIONS = MIGRATIONS.map((m) => m.version);

test("a SQLite store written by release 0.1.0 is upgraded with every key, owner and rotation grace kept", async () => {
  const path = await sqliteFrom(RELEASE_0_1_SQLITE);
  const db = await openSqliteDatabase(path);
  for (const row of WRITTEN.keys) db.prepare("INSERT INTO tollgate_api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)").run(...row);
  for (const row of WRITTEN.owners) db.prepare("INSERT INTO tollgate_owners VALUES (?, ?, ?, ?, ?)").run(...row);
  db.prepare("INSERT INTO tollgate_meta VALUES ('api_keys_issued', 'true')").run();
  db.close();

  const store = await openSqliteRecordStore(path);
  try {
    await assertKept(store);
  } finally {
    await store.close();
  }
  assert.deepEqual(await sqliteVersions(path), ALL_VERSIONS);
});

test("a PostgreSQL store written by release 0.1.0 is upgraded with every key, owner and rotation grace kept", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const pg = await scopedPostgres(url, "migrate");
  try {
    await pg.admin.query(`SET search_path TO "${pg.schema}"`);
    await pg.admin.query(RELEASE_0_1_POSTGRES);
    for (const row of WRITTEN.keys) await pg.admin.query("INSERT INTO tollgate_api_keys VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", row);
    for (const row of WRITTEN.owners) await pg.admin.query("INSERT INTO tollgate_owners VALUES ($1, $2, $3, $4, $5)", row);
    await pg.admin.query("INSERT INTO tollgate_meta VALUES ('api_keys_issued', 'true')");

    const store = await openPostgresRecordStore(pg.url);
    try {
      await assertKept(store);
    } finally {
      await store.close();
    }
    const { rows } = await pg.admin.query("SELECT version FROM tollgate_schema_migrations ORDER BY version");
    assert.deepEqual(rows.map((r) => Number(r.version)), ALL_VERSIONS);
  } finally {
    await pg.drop();
  }
});

test("eight PostgreSQL replicas opening one fresh database together apply each step exactly once", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const pg = await scopedPostgres(url, "migrate");
  try {
    const stores = await Promise.all(Array.from({ length: 8 }, () => openPostgresRecordStore(pg.url)));
    await Promise.all(stores.map((s) => s.close()));
    const { rows } = await pg.admin.query(`SELECT version FROM "${pg.schema}".tollgate_schema_migrations ORDER BY version`);
    assert.deepEqual(rows.map((r) => Number(r.version)), ALL_VERSIONS);
  } finally {
    await pg.drop();
  }
});

test("four processes opening one fresh SQLite file together all open it, and each step is applied once", async () => {
  const path = join(dir, `race-${++serial}`, "records.db");
  const storeModule = fileURLToPath(new URL("../../../src/core/stores/sqlite.ts", import.meta.url));
  // Every child loads its code first, then opens at the same instant: the opens overlap.
  const startAt = Date.now() + 4000;
  const script = `const { openSqliteRecordStore } = await import(${JSON.stringify(storeModule)});
    await new Promise((r) => setTimeout(r, ${startAt} - Date.now()));
    const store = await openSqliteRecordStore(${JSON.stringify(path)}); await store.listApiKeys(); await store.close();`;
  const codes = await Promise.all(
    Array.from({ length: 4 }, () => {
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "inherit"] });
      return new Promise<number | null>((resolve) => child.on("exit", resolve));
    }),
  );
  assert.deepEqual(codes, [0, 0, 0, 0]);
  assert.deepEqual(await sqliteVersions(path), ALL_VERSIONS);
});

test("a step that fails leaves the store at the step before, with nothing of the failed step", async () => {
  const path = join(dir, `failing-${++serial}.db`);
  await (await openSqliteRecordStore(path)).close();
  const db = await openSqliteDatabase(path);
  try {
    const failing = { version: SCHEMA_VERSION + 1, description: "fails half-way", sqlite: "CREATE TABLE half_done (a); SELECT * FROM no_such_table", postgres: "" };
    assert.throws(() => migrateSqlite(db, [...MIGRATIONS, failing]), /no such table/);
    assert.equal(db.prepare("SELECT 1 AS present FROM sqlite_master WHERE name = 'half_done'").get(), undefined);
  } finally {
    db.close();
  }
  assert.deepEqual(await sqliteVersions(path), ALL_VERSIONS);
});

test("a store migrated by a newer Tollgate is refused at open, naming both versions", async () => {
  const path = join(dir, `newer-${++serial}.db`);
  await (await openSqliteRecordStore(path)).close();
  const db = await openSqliteDatabase(path);
  db.prepare("INSERT INTO tollgate_schema_migrations VALUES (?, 'from the future', 0)").run(SCHEMA_VERSION + 1);
  db.close();
  await assert.rejects(openSqliteRecordStore(path), new RegExp(`version ${SCHEMA_VERSION + 1}, newer than this Tollgate's ${SCHEMA_VERSION}`));
});
