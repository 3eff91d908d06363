import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { openSqliteDatabase, type SqliteDatabase, type SqliteStatement } from "../../stores/sqlite-driver.js";
import type { CounterCheck, HitResult, QuotaStore } from "../store.js";

/**
 * The embedded quota store: one SQLite file, which several gateway processes
 * on one machine may share (WAL mode; each check is one atomic statement, or
 * one `BEGIN IMMEDIATE` transaction when a client has several limits).
 *
 * Counters are rows keyed by client, limit and window. The reference never
 * deletes its rows; here each row carries the end of its window and a
 * background sweep deletes the expired ones.
 */

export interface SqliteQuotaStoreOptions {
  /** The SQLite file; created with its folder. `:memory:` for tests. */
  dbPath: string;
  /** Key prefix (Llama Stack's `namespace`); default none. */
  namespace?: string | undefined;
  /** How often expired windows are deleted; default 60 s. 0: never (tests call {@link SqliteQuotaStore.sweep}). */
  sweepIntervalMs?: number | undefined;
  /** How long a check waits for another process's write lock; default 5 s. */
  busyTimeoutMs?: number | undefined;
  now?: (() => number) | undefined;
  /** Which SQLite driver (tests cover both). */
  driver?: "node:sqlite" | "better-sqlite3" | undefined;
}

export interface SqliteQuotaStore extends QuotaStore {
  /** Deletes counters whose window has ended; returns how many. */
  sweep(now?: number): number;
  /** Number of counter rows (for tests). */
  size(): number;
}

/**
 * Opens the SQLite quota store.
 *
 * @example
 * const store = await openSqliteQuotaStore({ dbPath: "./data/quota.db" });
 */
export async function openSqliteQuotaStore(options: SqliteQuotaStoreOptions): Promise<SqliteQuotaStore> {
  const { dbPath, namespace = "", sweepIntervalMs = 60_000, busyTimeoutMs = 5000, now = Date.now } = options;
  if (dbPath !== ":memory:") mkdirSync(dirname(dbPath), { recursive: true });
  const db: SqliteDatabase = await openSqliteDatabase(dbPath, { driver: options.driver });
  try {
    db.exec(`PRAGMA busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec(
      "CREATE TABLE IF NOT EXISTS tollgate_quota (key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID",
    );
    db.exec("CREATE INDEX IF NOT EXISTS tollgate_quota_expires ON tollgate_quota (expires_at)");
  } catch (err) {
    db.close();
    throw err;
  }

  // Increments only while below the limit; RETURNING yields no row when the
  // limit is reached. One statement: atomic against every other process.
  const consume: SqliteStatement = db.prepare(
    "INSERT INTO tollgate_quota (key, count, expires_at) VALUES (?, 1, ?) " +
      "ON CONFLICT (key) DO UPDATE SET count = count + 1 WHERE count < ? RETURNING count",
  );
  const read = db.prepare("SELECT count FROM tollgate_quota WHERE key = ? AND expires_at > ?");
  const add = db.prepare(
    "INSERT INTO tollgate_quota (key, count, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET count = count + excluded.count",
  );
  const sweepStatement = db.prepare("DELETE FROM tollgate_quota WHERE expires_at <= ?");
  const countRows = db.prepare("SELECT count(*) AS n FROM tollgate_quota");

  let closed = false;
  const timer = sweepIntervalMs > 0 ? setInterval(() => safeSweep(), sweepIntervalMs) : undefined;
  timer?.unref();

  function safeSweep(): void {
    try {
      sweepStatement.run(now());
    } catch {
      // Busy or failing: the next sweep retries; checks report failures themselves.
    }
  }

  function consumeOne(counter: CounterCheck): number | undefined {
    const row = consume.get(namespace + counter.key, counter.expiresAt, counter.limit);
    return row === undefined ? undefined : Number(row.count);
  }

  function readOne(counter: CounterCheck, at: number): number {
    const row = read.get(namespace + counter.key, at);
    return row === undefined ? 0 : Number(row.count);
  }

  function hit(counters: readonly CounterCheck[]): HitResult {
    if (closed) throw new Error("quota store is closed");
    // The common case, one request limit: a single statement, no transaction.
    if (counters.length === 1 && counters[0]!.consume) {
      const counter = counters[0]!;
      if (counter.limit <= 0) return { admitted: false, counts: [readOne(counter, now())] };
      const count = consumeOne(counter);
      return count === undefined ? { admitted: false, counts: [counter.limit] } : { admitted: true, counts: [count] };
    }
    // Several limits: all or nothing, under SQLite's write lock.
    const at = now();
    db.exec("BEGIN IMMEDIATE");
    try {
      const counts = counters.map((c) => readOne(c, at));
      const admitted = counters.every((c, i) => counts[i]! < c.limit);
      if (admitted) {
        counters.forEach((c, i) => {
          if (c.consume) counts[i] = consumeOne(c) ?? c.limit;
        });
      }
      db.exec("COMMIT");
      return { admitted, counts };
    } catch (err) {
      try {
        db.exec("ROLLBACK");
      } catch {
        // The transaction may already be gone; the original error is what matters.
      }
      throw err;
    }
  }

  return {
    async hit(counters) {
      return hit(counters);
    },
    async add(key, amount, expiresAt) {
      if (closed) throw new Error("quota store is closed");
      if (amount > 0) add.run(namespace + key, Math.trunc(amount), expiresAt);
    },
    sweep(at = now()) {
      return sweepStatement.run(at).changes;
    },
    size() {
      return Number(countRows.get()!.n);
    },
    async close() {
      if (closed) return;
      closed = true;
      if (timer) clearInterval(timer);
      db.close();
    },
  };
}
