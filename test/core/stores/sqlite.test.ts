/**
 * What only the SQLite store promises: the file and its folder are created,
 * a rollback journal (never WAL), and several processes sharing one file.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { after, test } from "node:test";
import { createApiKey } from "../../../src/core/keys.js";
import { openRecordStore } from "../../../src/core/stores/index.js";
import { openSqliteDatabase } from "../../../src/core/stores/sqlite-driver.js";

const run = promisify(execFile);
const repoRoot = resolve(import.meta.dirname, "../../..");
const moduleUrl = (path: string) => pathToFileURL(join(repoRoot, path)).href;

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-sqlite-store-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;
const freshPath = () => join(tempRoot, `case-${++counter}`, "nested", "tollgate.db");

/** Runs an ES module snippet in a separate Node process, with TypeScript loaded by tsx. */
async function inChildProcess(code: string): Promise<string> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    cwd: repoRoot,
    timeout: 60_000,
  });
  return stdout;
}

test("opening a store creates the database file and its missing folders", async () => {
  const dbPath = freshPath();
  const store = await openRecordStore({ type: "sqlite", db_path: dbPath });
  await store.close();
  assert.ok(existsSync(dbPath));
  assert.equal(store.kind, "sqlite");
});

test("the database file uses a rollback journal, not WAL, so no memory-mapped index can kill the process (SIGBUS)", async () => {
  const dbPath = freshPath();
  await (await openRecordStore({ type: "sqlite", db_path: dbPath })).close();
  const db = await openSqliteDatabase(dbPath);
  try {
    // Only WAL is a property of the file; a rollback journal is each connection's (TRUNCATE in Tollgate's).
    assert.notEqual(db.prepare("PRAGMA journal_mode").get()?.journal_mode, "wal");
  } finally {
    db.close();
  }
});

test("a file an older Tollgate left in WAL mode is switched to the rollback journal when opened", async () => {
  const dbPath = freshPath();
  mkdirSync(dirname(dbPath), { recursive: true });
  const old = await openSqliteDatabase(dbPath);
  old.exec("PRAGMA journal_mode = WAL");
  old.close();
  const store = await openRecordStore({ type: "sqlite", db_path: dbPath });
  try {
    await store.putOwner({ type: "file", id: "file-1", principal: "alice", attributes: {}, createdAt: 1 });
    assert.equal(existsSync(`${dbPath}-shm`), false, "a -shm file is still mapped");
  } finally {
    await store.close();
  }
});

test("a db_path whose folder cannot be created fails to open with the reason", async () => {
  const file = join(tempRoot, `blocker-${++counter}`);
  writeFileSync(file, "not a folder");
  await assert.rejects(openRecordStore({ type: "sqlite", db_path: join(file, "tollgate.db") }), /cannot create the folder for the SQLite database .*EEXIST/);
});

test("a file that is not a SQLite database fails to open", async () => {
  const file = join(tempRoot, `garbage-${++counter}.db`);
  writeFileSync(file, "this is not a database, just text that is long enough to have a header ".repeat(20));
  await assert.rejects(openRecordStore({ type: "sqlite", db_path: file }), /cannot open the SQLite database .*not a database/);
});

test("four processes creating keys in one new file at once lose none of them", async () => {
  const dbPath = freshPath();
  const writer = `
    const { openRecordStore } = await import(${JSON.stringify(moduleUrl("src/core/stores/index.ts"))});
    const { createApiKey } = await import(${JSON.stringify(moduleUrl("src/core/keys.ts"))});
    const store = await openRecordStore({ type: "sqlite", db_path: ${JSON.stringify(dbPath)} });
    for (let i = 0; i < 25; i++) await createApiKey(store, { principal: "p" + process.pid });
    await store.close();
  `;
  await Promise.all([1, 2, 3, 4].map(() => inChildProcess(writer)));
  const store = await openRecordStore({ type: "sqlite", db_path: dbPath });
  try {
    const keys = await store.listApiKeys();
    assert.equal(keys.length, 100);
    assert.equal(new Set(keys.map((k) => k.principal)).size, 4);
  } finally {
    await store.close();
  }
});

test("a key revoked by another process is refused by a store that stayed open", async () => {
  const dbPath = freshPath();
  const store = await openRecordStore({ type: "sqlite", db_path: dbPath });
  try {
    const { record } = await createApiKey(store, { principal: "alice" });
    assert.equal((await store.findApiKeyByHash(record.hash))?.revokedAt, undefined);
    await inChildProcess(`
      const { openRecordStore } = await import(${JSON.stringify(moduleUrl("src/core/stores/index.ts"))});
      const store = await openRecordStore({ type: "sqlite", db_path: ${JSON.stringify(dbPath)} });
      await store.revokeApiKey(${JSON.stringify(record.id)}, 1234);
      await store.close();
    `);
    assert.equal((await store.findApiKeyByHash(record.hash))?.revokedAt, 1234);
  } finally {
    await store.close();
  }
});
