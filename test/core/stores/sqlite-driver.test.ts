import assert from "node:assert/strict";
import { test } from "node:test";
import { openSqliteDatabase, type SqliteDriverName } from "../../../src/core/stores/sqlite-driver.js";

async function loads(driver: SqliteDriverName): Promise<boolean> {
  try {
    (await openSqliteDatabase(":memory:", { driver })).close();
    return true;
  } catch {
    return false;
  }
}

const [major = 0, minor = 0] = process.versions.node.split(".").map(Number);
const runtimeHasNodeSqlite = major > 22 || (major === 22 && minor >= 13);

test("the built-in node:sqlite is chosen when the runtime has it, better-sqlite3 otherwise", async () => {
  const db = await openSqliteDatabase(":memory:");
  try {
    if (runtimeHasNodeSqlite) assert.equal(db.driver, "node:sqlite");
    else assert.equal(db.driver, "better-sqlite3");
  } finally {
    db.close();
  }
});

test("insisting on a driver this runtime cannot load says to use Node 22.5+ or install better-sqlite3", async (t) => {
  let missing: SqliteDriverName | undefined;
  for (const driver of ["node:sqlite", "better-sqlite3"] as const) if (!(await loads(driver))) missing = driver;
  if (!missing) {
    t.skip(`both drivers load in Node ${process.version}`);
    return;
  }
  await assert.rejects(openSqliteDatabase(":memory:", { driver: missing }), (err: Error) => {
    assert.match(err.message, /use Node\.js 22\.5 or later .* or install the optional dependency better-sqlite3/);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
});

for (const driver of ["node:sqlite", "better-sqlite3"] as const) {
  test(`through ${driver}, statements bind positional parameters and return plain rows`, async (t) => {
    if (!(await loads(driver))) {
      t.skip(`${driver} is not available in Node ${process.version}`);
      return;
    }
    const db = await openSqliteDatabase(":memory:", { driver });
    try {
      assert.equal(db.driver, driver);
      db.exec("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, maybe INTEGER)");
      const insert = db.prepare("INSERT INTO t VALUES (?, ?, ?)");
      assert.deepEqual(insert.run("a", 1_700_000_000_123, null), { changes: 1 });
      insert.run("b", 2, 3);
      assert.deepEqual({ ...db.prepare("SELECT * FROM t WHERE id = ?").get("a") }, { id: "a", n: 1_700_000_000_123, maybe: null });
      assert.equal(db.prepare("SELECT * FROM t WHERE id = ?").get("zzz"), undefined);
      assert.deepEqual(db.prepare("SELECT id FROM t ORDER BY id").all().map((r) => r.id), ["a", "b"]);
      assert.deepEqual(db.prepare("UPDATE t SET maybe = ? WHERE id = ?").run(9, "nope"), { changes: 0 });
    } finally {
      db.close();
    }
  });
}
