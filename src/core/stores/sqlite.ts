import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { API_KEY_COLUMNS, apiKeyForSecret, apiKeyFromRow, apiKeyRowValues, DuplicateApiKeyError, KEYS_ISSUED_MARKER } from "../keys.js";
import { migrateSqlite } from "./migrations.js";
import { ownerFromRow } from "./owners.js";
import { immediateTransaction, openSqliteDatabase, type SqliteDriverName, type SqliteValue } from "./sqlite-driver.js";
import { applySqliteSettings } from "./sqlite-settings.js";
import type { OwnerRecord, RecordStore } from "./types.js";
import { mergeUsage, usageRowFrom, usageRowValues, usageSelect, usageUpsert } from "./usage-sql.js";

/**
 * How long a statement waits for another process's write lock before failing
 * (ms). The drivers are synchronous, so the wait holds the event loop: kept
 * within the ~2 s a request may wait for the store (docs/security.md, "Faults
 * in the stores").
 */
const BUSY_TIMEOUT_MS = 2000;

const COLUMNS = API_KEY_COLUMNS;

export interface SqliteRecordStoreOptions {
  /** Force one SQLite driver (tests); by default the best this runtime has. */
  driver?: SqliteDriverName | undefined;
}

/**
 * The record store in a SQLite file: the embedded default.
 *
 * Several processes (gateway workers, `tollgate keys`) may open the same
 * file at once: the busy timeout makes a writer wait for the lock instead of
 * failing at once. The journal is a rollback journal, not WAL, so that a file
 * that stops being writable fails a statement instead of killing the process
 * (see sqlite-settings.ts). Every
 * statement commits by itself, so a revocation is visible to every other
 * connection as soon as `revokeApiKey` resolves.
 *
 * A relative `dbPath` is resolved against the current directory; its folder
 * is created if missing.
 *
 * @example
 * const store = await openSqliteRecordStore("./data/tollgate.db");
 * try { await store.listApiKeys(); } finally { await store.close(); }
 */
export async function openSqliteRecordStore(dbPath: string, options: SqliteRecordStoreOptions = {}): Promise<RecordStore> {
  const inMemory = dbPath === ":memory:";
  const path = inMemory ? dbPath : resolve(dbPath);
  if (!inMemory) {
    try {
      mkdirSync(dirname(path), { recursive: true });
    } catch (err) {
      throw new Error(`cannot create the folder for the SQLite database ${path}: ${reason(err)}`, { cause: err });
    }
  }
  const db = await openSqliteDatabase(path, { driver: options.driver }).catch((err: unknown) => {
    throw new Error(`cannot open the SQLite database ${path}: ${reason(err)}`, { cause: err });
  });
  try {
    applySqliteSettings(db, { busyTimeoutMs: BUSY_TIMEOUT_MS });
    migrateSqlite(db);
  } catch (err) {
    db.close();
    throw new Error(`cannot open the SQLite database ${path}: ${reason(err)}`, { cause: err });
  }

  const insert = db.prepare(`INSERT INTO tollgate_api_keys (${COLUMNS}) VALUES (${COLUMNS.split(",").map(() => "?").join(", ")})`);
  const byHash = db.prepare(
    `SELECT ${COLUMNS}, previous_valid_until FROM tollgate_api_keys WHERE hash = ? OR previous_hash = ? ORDER BY hash = ? DESC LIMIT 1`,
  );
  const rotate = db.prepare(
    "UPDATE tollgate_api_keys SET previous_hash = CASE WHEN ? IS NULL THEN NULL ELSE hash END, previous_valid_until = ?, hash = ?, prefix = ? " +
      `WHERE id = ? AND revoked_at IS NULL RETURNING ${COLUMNS}`,
  );
  const markIssued = db.prepare(`INSERT INTO tollgate_meta (name, value) VALUES ('${KEYS_ISSUED_MARKER}', 'true') ON CONFLICT (name) DO NOTHING`);
  const everIssued = db.prepare(
    `SELECT 1 AS held FROM tollgate_meta WHERE name = '${KEYS_ISSUED_MARKER}' UNION ALL SELECT 1 FROM tollgate_api_keys LIMIT 1`,
  );
  const all = db.prepare(`SELECT ${COLUMNS} FROM tollgate_api_keys ORDER BY created_at, id`);
  const byId = db.prepare(`SELECT ${COLUMNS} FROM tollgate_api_keys WHERE id = ?`);
  // Newest first; `after` is the last id of the previous page, so the page
  // starts below its (created_at, id), whatever was created since.
  const pageStatements = new Map<string, ReturnType<typeof db.prepare>>();
  const pageOf = (byPrincipal: boolean, after: boolean) => {
    const id = `${byPrincipal}:${after}`;
    let statement = pageStatements.get(id);
    if (!statement) {
      const where = [
        byPrincipal ? "principal = ?" : "",
        after ? "(created_at, id) < (SELECT created_at, id FROM tollgate_api_keys WHERE id = ?)" : "",
      ].filter(Boolean);
      statement = db.prepare(
        `SELECT ${COLUMNS} FROM tollgate_api_keys ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at DESC, id DESC LIMIT ?`,
      );
      pageStatements.set(id, statement);
    }
    return statement;
  };
  const upsertUsage = db.prepare(usageUpsert(() => "?"));
  // COALESCE keeps the first revocation time when a key is revoked twice.
  const revoke = db.prepare(
    `UPDATE tollgate_api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? OR hash = ? RETURNING ${COLUMNS}`,
  );
  const countActive = db.prepare(
    "SELECT COUNT(*) AS n FROM tollgate_api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
  );

  const putOwner = db.prepare(
    "INSERT INTO tollgate_owners (type, id, principal, attributes, created_at, upstream) VALUES (?, ?, ?, ?, ?, ?) " +
      "ON CONFLICT (type, id) DO UPDATE SET principal = excluded.principal, attributes = excluded.attributes, created_at = excluded.created_at, upstream = excluded.upstream",
  );
  const ownerById = db.prepare("SELECT type, id, principal, attributes, created_at, upstream FROM tollgate_owners WHERE type = ? AND id = ?");
  const deleteOwner = db.prepare("DELETE FROM tollgate_owners WHERE type = ? AND id = ?");
  const probe = db.prepare("INSERT INTO tollgate_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at");

  let closed = false;
  const open = () => {
    if (closed) throw new Error("the record store is closed");
  };

  return {
    kind: "sqlite",
    async insertApiKey(record) {
      open();
      try {
        insert.run(...apiKeyRowValues(record));
      } catch (err) {
        if (/UNIQUE constraint failed|PRIMARY KEY/i.test(String((err as Error)?.message))) {
          throw new DuplicateApiKeyError({ cause: err });
        }
        throw err;
      }
      markIssued.run();
    },
    async insertFirstApiKey(record) {
      open();
      // IMMEDIATE takes the write lock before the check, so of several
      // processes starting on one file exactly one sees an empty store.
      return immediateTransaction(db, () => {
        const held = everIssued.get() !== undefined;
        if (!held) {
          insert.run(...apiKeyRowValues(record));
          markIssued.run();
        }
        return !held;
      });
    },
    async findApiKeyByHash(hash) {
      open();
      const row = byHash.get(hash, hash, hash);
      return row ? apiKeyForSecret(row, hash) : undefined;
    },
    async rotateApiKey(id, secret, previousValidUntil) {
      open();
      const until = previousValidUntil ?? null;
      const row = rotate.get(until, until, secret.hash, secret.prefix, id);
      return row ? apiKeyFromRow(row) : undefined;
    },
    async listApiKeys() {
      open();
      return all.all().map(apiKeyFromRow);
    },
    async pageApiKeys(query) {
      open();
      const params: SqliteValue[] = [];
      if (query.principal !== undefined) params.push(query.principal);
      if (query.after !== undefined) params.push(query.after);
      const rows = pageOf(query.principal !== undefined, query.after !== undefined).all(...params, query.limit + 1);
      return { keys: rows.slice(0, query.limit).map(apiKeyFromRow), hasMore: rows.length > query.limit };
    },
    async getApiKey(id) {
      open();
      const row = byId.get(id);
      return row ? apiKeyFromRow(row) : undefined;
    },
    async recordUsage(deltas) {
      open();
      const rows = mergeUsage(deltas);
      if (rows.length === 0) return;
      immediateTransaction(db, () => {
        for (const row of rows) upsertUsage.run(...usageRowValues(row));
      });
    },
    async usage(query) {
      open();
      const { text, values } = usageSelect(query, () => "?");
      return db.prepare(text).all(...values).map((row) => usageRowFrom(query.groupBy, row));
    },
    async revokeApiKey(idOrHash, at) {
      open();
      const row = revoke.get(at, idOrHash, idOrHash);
      return row ? apiKeyFromRow(row) : undefined;
    },
    async countActiveApiKeys(now) {
      open();
      return Number(countActive.get(now)?.n ?? 0);
    },
    async putOwner(record) {
      open();
      putOwner.run(record.type, record.id, record.principal, JSON.stringify(record.attributes), record.createdAt, record.upstream ?? null);
    },
    async findOwner(type, id) {
      open();
      const row = ownerById.get(type, id);
      return row ? ownerFromRow(row) : undefined;
    },
    async findOwners(type, ids) {
      open();
      const found = new Map<string, OwnerRecord>();
      for (const id of new Set(ids)) {
        const row = ownerById.get(type, id);
        if (row) found.set(id, ownerFromRow(row));
      }
      return found;
    },
    async deleteOwner(type, id) {
      open();
      return Number(deleteOwner.run(type, id).changes ?? 0) > 0;
    },
    async ping() {
      open();
      // A committed write, not SELECT 1: a read-only, immutable or full file
      // still answers reads, and /ready must say what writes will meet.
      probe.run(Date.now());
    },
    async close() {
      if (closed) return;
      closed = true;
      db.close();
    },
  };
}

/** An error's message on one line (the CLI reports one line), with the errno code when there is one. */
function reason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const message = (e instanceof Error ? e.message : String(err)).replace(/\s+/g, " ").trim();
  return e?.code && !message.includes(e.code) ? `${e.code}: ${message}` : message;
}
