/**
 * The record store contract, run against every backend: SQLite through each
 * driver this runtime can load, and PostgreSQL. One table of cases, so the
 * backends cannot drift apart.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import { DuplicateApiKeyError } from "../../../src/core/keys.js";
import { openPostgresRecordStore } from "../../../src/core/stores/postgres.js";
import { openSqliteDatabase, type SqliteDriverName } from "../../../src/core/stores/sqlite-driver.js";
import { openSqliteRecordStore } from "../../../src/core/stores/sqlite.js";
import type { ApiKeyRecord, RecordStore } from "../../../src/core/stores/types.js";
import { requireService } from "../../support/services.js";
import { scopedPostgres } from "../../support/postgres.js";

/** A place both stores of a case share: a SQLite file or a PostgreSQL schema. */
interface Backend {
  name: string;
  /** Resolves undefined when the backend cannot run here (the test is then skipped). */
  prepare(t: TestContext): Promise<{ open(): Promise<RecordStore>; cleanup(): Promise<void> } | undefined>;
}

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-record-store-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;

function sqliteBackend(driver: SqliteDriverName): Backend {
  return {
    name: `sqlite (${driver})`,
    async prepare(t) {
      try {
        (await openSqliteDatabase(":memory:", { driver })).close();
      } catch (err) {
        t.skip(`${driver} is not available in Node ${process.version}`);
        return undefined;
      }
      const dbPath = join(tempRoot, `case-${++counter}`, "records.db");
      return { open: () => openSqliteRecordStore(dbPath, { driver }), cleanup: async () => {} };
    },
  };
}

/** Each case gets its own schema, chosen by the URL's search_path, so parallel runs never meet. */
const postgresBackend: Backend = {
  name: "postgres",
  async prepare(t) {
    const url = await requireService(t, "postgres");
    if (!url) return undefined;
    const scoped = await scopedPostgres(url, "store");
    return { open: () => openPostgresRecordStore(scoped.url), cleanup: scoped.drop };
  },
};

const backends: Backend[] = [sqliteBackend("node:sqlite"), sqliteBackend("better-sqlite3"), postgresBackend];

let serial = 0;
function record(overrides: Partial<ApiKeyRecord> = {}): ApiKeyRecord {
  const n = ++serial;
  return {
    id: `key_${n.toString(16).padStart(16, "0")}`,
    hash: n.toString(16).padStart(64, "a"),
    prefix: `tg_${n}`.padEnd(10, "x"),
    principal: `user-${n}`,
    attributes: { roles: ["admin", "user"], teams: ["ml"] },
    createdAt: 1_700_000_000_000 + n,
    expiresAt: undefined,
    revokedAt: undefined,
    name: undefined,
    limits: undefined,
    ...overrides,
  };
}

interface Case {
  name: string;
  run(open: () => Promise<RecordStore>): Promise<void>;
}

/** Opens a store, runs `work`, closes it whatever happens. */
async function using<T>(open: () => Promise<RecordStore>, work: (store: RecordStore) => Promise<T>): Promise<T> {
  const store = await open();
  try {
    return await work(store);
  } finally {
    await store.close();
  }
}

const cases: Case[] = [
  {
    name: "a stored key is found by its hash with every field as it was inserted",
    run: (open) =>
      using(open, async (store) => {
        const key = record({ expiresAt: 1_800_000_000_000 });
        await store.insertApiKey(key);
        assert.deepEqual(await store.findApiKeyByHash(key.hash), key);
      }),
  },
  {
    name: "a key without expiry or revocation reads back with both absent, not null",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        const found = await store.findApiKeyByHash(key.hash);
        assert.equal(found?.expiresAt, undefined);
        assert.equal(found?.revokedAt, undefined);
        assert.equal(typeof found?.createdAt, "number");
      }),
  },
  {
    name: "an unknown hash finds nothing",
    run: (open) =>
      using(open, async (store) => {
        await store.insertApiKey(record());
        assert.equal(await store.findApiKeyByHash("f".repeat(64)), undefined);
      }),
  },
  {
    name: "a second key with the same id or the same hash is refused and the first is kept",
    run: (open) =>
      using(open, async (store) => {
        const first = record();
        await store.insertApiKey(first);
        await assert.rejects(store.insertApiKey(record({ id: first.id })), DuplicateApiKeyError);
        await assert.rejects(store.insertApiKey(record({ hash: first.hash })), DuplicateApiKeyError);
        assert.deepEqual(await store.listApiKeys(), [first]);
      }),
  },
  {
    name: "keys are listed oldest first, revoked ones included",
    run: (open) =>
      using(open, async (store) => {
        const newest = record({ createdAt: 3000 });
        const oldest = record({ createdAt: 1000, revokedAt: 1500 });
        const middle = record({ createdAt: 2000 });
        for (const key of [newest, oldest, middle]) await store.insertApiKey(key);
        assert.deepEqual(
          (await store.listApiKeys()).map((k) => k.id),
          [oldest.id, middle.id, newest.id],
        );
      }),
  },
  {
    name: "a key's name and per-key limits read back as stored, by hash and by id",
    run: (open) =>
      using(open, async (store) => {
        const key = record({ name: "ci bot", limits: [{ requests: 10, period: "minute" }, { spend: 25.5, period: "month" }] });
        await store.insertApiKey(key);
        assert.deepEqual(await store.findApiKeyByHash(key.hash), key);
        assert.deepEqual(await store.getApiKey(key.id), key);
        assert.equal(await store.getApiKey("key_unknown"), undefined);
      }),
  },
  {
    name: "pages of keys run newest first, each starting after the previous page's last id, until has_more is false",
    run: (open) =>
      using(open, async (store) => {
        // Two keys share a creation time: the id breaks the tie, so none is skipped or repeated.
        const keys = [1000, 2000, 2000, 3000, 4000].map((createdAt) => record({ createdAt }));
        for (const key of keys) await store.insertApiKey(key);
        await store.revokeApiKey(keys[4]!.id, 5000);
        const seen: string[] = [];
        let after: string | undefined;
        for (;;) {
          const page = await store.pageApiKeys({ limit: 2, after });
          seen.push(...page.keys.map((k) => k.id));
          if (!page.hasMore) break;
          after = page.keys.at(-1)!.id;
        }
        const expected = [...keys].sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1)).map((k) => k.id);
        assert.deepEqual(seen, expected);
        assert.equal((await store.pageApiKeys({ limit: 10 })).keys[0]?.revokedAt, 5000);
      }),
  },
  {
    name: "a page filtered by principal holds only that principal's keys",
    run: (open) =>
      using(open, async (store) => {
        const mine = [record({ principal: "alice", createdAt: 1 }), record({ principal: "alice", createdAt: 3 })];
        for (const key of [...mine, record({ principal: "bob", createdAt: 2 })]) await store.insertApiKey(key);
        const page = await store.pageApiKeys({ principal: "alice", limit: 1 });
        assert.deepEqual(page.keys.map((k) => k.id), [mine[1]!.id]);
        assert.equal(page.hasMore, true);
        const rest = await store.pageApiKeys({ principal: "alice", limit: 1, after: mine[1]!.id });
        assert.deepEqual(rest, { keys: [mine[0]], hasMore: false });
      }),
  },
  {
    name: "an empty store lists no keys and counts none active",
    run: (open) =>
      using(open, async (store) => {
        assert.deepEqual(await store.listApiKeys(), []);
        assert.equal(await store.countActiveApiKeys(Date.now()), 0);
      }),
  },
  {
    name: "revoking by id marks the key revoked at the given time and returns it",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        assert.deepEqual(await store.revokeApiKey(key.id, 42_000), { ...key, revokedAt: 42_000 });
        assert.equal((await store.findApiKeyByHash(key.hash))?.revokedAt, 42_000);
      }),
  },
  {
    name: "revoking by hash works like revoking by id",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        assert.equal((await store.revokeApiKey(key.hash, 7))?.id, key.id);
        assert.equal((await store.findApiKeyByHash(key.hash))?.revokedAt, 7);
      }),
  },
  {
    name: "revoking an unknown key resolves undefined and changes nothing",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        assert.equal(await store.revokeApiKey("key_0000000000000000", 1), undefined);
        assert.deepEqual(await store.listApiKeys(), [key]);
      }),
  },
  {
    name: "revoking a key twice keeps the first revocation time",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        await store.revokeApiKey(key.id, 100);
        assert.equal((await store.revokeApiKey(key.id, 200))?.revokedAt, 100);
      }),
  },
  {
    name: "active keys exclude revoked keys and keys expired at or before now",
    run: (open) =>
      using(open, async (store) => {
        const now = 10_000;
        await store.insertApiKey(record()); // active: never expires
        await store.insertApiKey(record({ expiresAt: now + 1 })); // active
        await store.insertApiKey(record({ expiresAt: now })); // expired this very millisecond
        await store.insertApiKey(record({ expiresAt: now - 1 })); // expired
        await store.insertApiKey(record({ revokedAt: 5 })); // revoked
        assert.equal(await store.countActiveApiKeys(now), 2);
      }),
  },
  {
    name: "attributes with unusual names and values come back exactly",
    run: (open) =>
      using(open, async (store) => {
        // An own property named __proto__, as parseAttributes produces for `--attr __proto__=x`.
        const attributes = Object.fromEntries([["__proto__", ["x"]], ["a.b", ["c=d", "e,f", "ü"]], ["empty", []]]);
        const key = record({ principal: "ünïcödé 'quoted' \"user\"; DROP TABLE x", attributes });
        await store.insertApiKey(key);
        assert.deepEqual(await store.findApiKeyByHash(key.hash), key);
      }),
  },
  {
    name: "ping answers while the store is open (readiness)",
    run: (open) =>
      using(open, async (store) => {
        await store.ping();
      }),
  },
  {
    name: "a closed store refuses every call and closing again is harmless",
    run: async (open) => {
      const store = await open();
      await store.close();
      await assert.rejects(store.ping(), /closed/);
      await assert.rejects(store.findApiKeyByHash("a".repeat(64)), /closed/);
      await assert.rejects(store.insertApiKey(record()), /closed/);
      await assert.rejects(store.listApiKeys(), /closed/);
      await assert.rejects(store.revokeApiKey("key_x", 1), /closed/);
      await assert.rejects(store.countActiveApiKeys(1), /closed/);
      await store.close();
    },
  },
  {
    name: "two stores opened at once on one database both work, and each sees the other's writes at once",
    run: async (open) => {
      const [a, b] = await Promise.all([open(), open()]);
      try {
        const key = record();
        await a.insertApiKey(key);
        assert.equal((await b.findApiKeyByHash(key.hash))?.revokedAt, undefined);
        await b.revokeApiKey(key.id, 99);
        assert.equal((await a.findApiKeyByHash(key.hash))?.revokedAt, 99);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    },
  },
  {
    name: "a rotated key is found by its new secret; the old one finds it only until the end of its grace",
    run: (open) =>
      using(open, async (store) => {
        const key = record({ expiresAt: 1_900_000_000_000 });
        await store.insertApiKey(key);
        const next = { hash: "b".repeat(64), prefix: "tg_newsecr" };
        const rotated = await store.rotateApiKey(key.id, next, 1_800_000_000_000);
        assert.deepEqual(rotated, { ...key, ...next });
        assert.deepEqual(await store.findApiKeyByHash(next.hash), { ...key, ...next });
        // The old secret: the same key, expiring when the grace ends.
        assert.deepEqual(await store.findApiKeyByHash(key.hash), { ...key, ...next, expiresAt: 1_800_000_000_000 });
        // A second rotation, without grace, ends both earlier secrets at once.
        const third = { hash: "c".repeat(64), prefix: "tg_third00" };
        await store.rotateApiKey(key.id, third, undefined);
        assert.equal(await store.findApiKeyByHash(key.hash), undefined);
        assert.equal(await store.findApiKeyByHash(next.hash), undefined);
        assert.equal((await store.findApiKeyByHash(third.hash))?.id, key.id);
        assert.deepEqual((await store.listApiKeys()).map((k) => [k.id, k.hash]), [[key.id, third.hash]]);
      }),
  },
  {
    name: "a revoked or unknown key cannot be rotated",
    run: (open) =>
      using(open, async (store) => {
        const key = record();
        await store.insertApiKey(key);
        await store.revokeApiKey(key.id, 5);
        assert.equal(await store.rotateApiKey(key.id, { hash: "d".repeat(64), prefix: "tg_x" }, undefined), undefined);
        assert.equal(await store.rotateApiKey("key_unknown", { hash: "e".repeat(64), prefix: "tg_x" }, undefined), undefined);
        assert.equal((await store.findApiKeyByHash(key.hash))?.revokedAt, 5);
      }),
  },
  {
    name: "the first key is stored only while the store has never held one, revoked and expired keys included",
    run: (open) =>
      using(open, async (store) => {
        const first = record();
        assert.equal(await store.insertFirstApiKey(first), true);
        assert.deepEqual(await store.findApiKeyByHash(first.hash), first);
        assert.equal(await store.insertFirstApiKey(record()), false);
        await store.revokeApiKey(first.id, 10);
        assert.equal(await store.insertFirstApiKey(record()), false);
        assert.deepEqual((await store.listApiKeys()).map((k) => k.id), [first.id]);
      }),
  },
  {
    name: "a store that holds any key, even an expired one, never stores a first key",
    run: (open) =>
      using(open, async (store) => {
        await store.insertApiKey(record({ expiresAt: 1 }));
        assert.equal(await store.insertFirstApiKey(record()), false);
        assert.equal((await store.listApiKeys()).length, 1);
      }),
  },
  {
    name: "of eight stores storing a first key at once on one database, exactly one does",
    run: async (open) => {
      const stores = await Promise.all(Array.from({ length: 8 }, () => open()));
      try {
        const stored = await Promise.all(stores.map((store) => store.insertFirstApiKey(record())));
        assert.equal(stored.filter(Boolean).length, 1);
        assert.equal((await stores[0]!.listApiKeys()).length, 1);
      } finally {
        await Promise.all(stores.map((store) => store.close()));
      }
    },
  },
  {
    name: "reopening a database keeps its keys",
    run: async (open) => {
      const key = record();
      await using(open, (store) => store.insertApiKey(key));
      assert.deepEqual(await using(open, (store) => store.listApiKeys()), [key]);
    },
  },
];

for (const backend of backends) {
  describe(`the ${backend.name} record store`, () => {
    for (const c of cases) {
      test(c.name, async (t) => {
        const place = await backend.prepare(t);
        if (!place) return;
        try {
          await c.run(place.open);
        } finally {
          await place.cleanup();
        }
      });
    }
  });
}

test("the postgres store fails to open, with the server's reason, when the database does not exist", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const missing = new URL(url);
  missing.pathname = "/tollgate_no_such_database";
  await assert.rejects(openPostgresRecordStore(missing.toString()), /does not exist/);
});

test("the postgres store fails to open within its connect timeout when nothing listens", async () => {
  // Port 1 on loopback refuses at once: the point is a rejection, not a hang.
  await assert.rejects(openPostgresRecordStore("postgres://postgres@127.0.0.1:1/test"), /ECONNREFUSED|connect/);
});

test("eight postgres stores starting at once on a fresh schema all open (schema creation does not race)", async (t) => {
  const place = await postgresBackend.prepare(t);
  if (!place) return;
  try {
    const stores = await Promise.all(Array.from({ length: 8 }, () => place.open()));
    await Promise.all(stores.map((s) => s.close()));
  } finally {
    await place.cleanup();
  }
});

test("a SQLite store from an earlier release (no rotation columns, no marker) keeps its keys, counts them as held, and rotates", async () => {
  const dbPath = join(tempRoot, `older-${++counter}.db`);
  const db = await openSqliteDatabase(dbPath);
  db.exec(
    "CREATE TABLE tollgate_api_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, principal TEXT NOT NULL, " +
      "attributes TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER)",
  );
  const old = record({ revokedAt: 7 });
  db.prepare("INSERT INTO tollgate_api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)").run(old.id, old.hash, old.prefix, old.principal, JSON.stringify(old.attributes), old.createdAt, null, 7);
  const live = record();
  db.prepare("INSERT INTO tollgate_api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)").run(live.id, live.hash, live.prefix, live.principal, JSON.stringify(live.attributes), live.createdAt, null, null);
  db.close();
  await using(
    () => openSqliteRecordStore(dbPath),
    async (store) => {
      assert.deepEqual(await store.findApiKeyByHash(old.hash), old);
      assert.equal(await store.insertFirstApiKey(record()), false);
      assert.ok(await store.rotateApiKey(live.id, { hash: "f".repeat(64), prefix: "tg_rotated" }, 2_000_000_000_000));
      assert.equal((await store.findApiKeyByHash(live.hash))?.expiresAt, 2_000_000_000_000);
    },
  );
});

test("a PostgreSQL store from an earlier release keeps its keys, counts them as held, and rotates", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const scoped = await scopedPostgres(url, "older");
  try {
    await scoped.admin.query(
      `CREATE TABLE "${scoped.schema}".tollgate_api_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, principal TEXT NOT NULL, ` +
        "attributes TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT)",
    );
    const old = record({ revokedAt: 7 });
    await scoped.admin.query(`INSERT INTO "${scoped.schema}".tollgate_api_keys VALUES ($1, $2, $3, $4, $5, $6, NULL, 7)`, [
      old.id, old.hash, old.prefix, old.principal, JSON.stringify(old.attributes), old.createdAt,
    ]);
    await using(
      () => openPostgresRecordStore(scoped.url),
      async (store) => {
        assert.deepEqual(await store.findApiKeyByHash(old.hash), old);
        assert.equal(await store.insertFirstApiKey(record()), false);
      },
    );
  } finally {
    await scoped.drop();
  }
});
