/**
 * One small SQLite interface over the two drivers Tollgate can run on.
 *
 * Node 22.5+ ships `node:sqlite` (no native build, nothing to install); Node
 * 20 does not, so there the optional dependency `better-sqlite3` does the
 * work. Both are synchronous and both bind positional `?` parameters, which
 * is all the stores use, so the rest of the code never learns which one it got.
 */

/** A value SQLite can bind. `undefined` is not one: pass `null`. */
export type SqliteValue = null | number | bigint | string | Uint8Array;

/** A result row, column name to value. */
export type SqliteRow = Record<string, unknown>;

export interface SqliteStatement {
  run(...params: SqliteValue[]): { changes: number };
  get(...params: SqliteValue[]): SqliteRow | undefined;
  all(...params: SqliteValue[]): SqliteRow[];
}

export type SqliteDriverName = "node:sqlite" | "better-sqlite3";

export interface SqliteDatabase {
  /** Which driver opened the file. */
  readonly driver: SqliteDriverName;
  /** Runs one or more statements that take no parameters (DDL, PRAGMA). */
  exec(sql: string): void;
  prepare(sql: string): SqliteStatement;
  close(): void;
}

/**
 * Runs `work` in one `BEGIN IMMEDIATE` transaction: the write lock is taken
 * before `work` reads anything, so what it reads cannot change under it in
 * another process (waiting up to the busy timeout for the lock). Committed
 * when `work` returns, rolled back when it throws (the original error is
 * rethrown, not a rollback's).
 *
 * @example const created = immediateTransaction(db, () => (check.get() ? false : (insert.run(), true)));
 */
export function immediateTransaction<T>(db: SqliteDatabase, work: () => T): T {
  db.exec("BEGIN IMMEDIATE");
  try {
    const result = work();
    db.exec("COMMIT");
    return result;
  } catch (err) {
    try {
      db.exec("ROLLBACK");
    } catch {
      // SQLite may have rolled back already (a failed COMMIT, SQLITE_FULL).
    }
    throw err;
  }
}

export interface OpenSqliteOptions {
  /**
   * Insist on one driver (tests use this to cover both); by default
   * `node:sqlite` when the runtime has it, else `better-sqlite3`.
   */
  driver?: SqliteDriverName | undefined;
}

/**
 * Opens (creating if needed) the SQLite file at `path` with whichever driver
 * this runtime can load. The caller sets pragmas; this only opens.
 *
 * @example
 * const db = await openSqliteDatabase("./data/tollgate.db");
 * db.prepare("SELECT 1 AS one").get(); // { one: 1 }
 */
export async function openSqliteDatabase(path: string, options: OpenSqliteOptions = {}): Promise<SqliteDatabase> {
  const failures: string[] = [];
  if (options.driver !== "better-sqlite3") {
    try {
      return await openWithNodeSqlite(path);
    } catch (err) {
      if (!isLoadFailure(err)) throw err;
      failures.push(`node:sqlite: ${oneLine(err)}`);
      if (options.driver === "node:sqlite") throw unavailable(failures);
    }
  }
  try {
    return await openWithBetterSqlite(path);
  } catch (err) {
    if (!isLoadFailure(err)) throw err;
    failures.push(`better-sqlite3: ${oneLine(err)}`);
    throw unavailable(failures);
  }
}

/** Marks a failure to load a driver, as opposed to a failure to open the file. */
class DriverLoadError extends Error {}

function isLoadFailure(err: unknown): err is DriverLoadError {
  return err instanceof DriverLoadError;
}

function unavailable(failures: string[]): Error {
  return new Error(
    `SQLite is not available in this Node.js: use Node.js 22.5 or later (built-in node:sqlite) ` +
      `or install the optional dependency better-sqlite3 (${failures.join("; ")})`,
  );
}

/** A driver's load error on one line: the CLI reports failures in one line. */
function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, " ").trim();
}

async function openWithNodeSqlite(path: string): Promise<SqliteDatabase> {
  let mod: typeof import("node:sqlite");
  try {
    // A dynamic import inside try: on Node 20 (and 22.5-22.12 without
    // --experimental-sqlite) the module does not exist, and a static import
    // would fail the whole program at load time.
    mod = await import("node:sqlite");
  } catch (err) {
    throw new DriverLoadError(oneLine(err));
  }
  const db = new mod.DatabaseSync(path);
  return {
    driver: "node:sqlite",
    exec: (sql) => db.exec(sql),
    prepare(sql) {
      const statement = db.prepare(sql);
      return {
        run: (...params) => ({ changes: Number(statement.run(...params).changes) }),
        get: (...params) => statement.get(...params) as SqliteRow | undefined,
        all: (...params) => statement.all(...params) as SqliteRow[],
      };
    },
    close: () => db.close(),
  };
}

async function openWithBetterSqlite(path: string): Promise<SqliteDatabase> {
  let Database: typeof import("better-sqlite3");
  try {
    // Optional dependency: absent, or built for another Node ABI. The native
    // addon loads lazily in the constructor, so open a throwaway in-memory
    // database to find out here, apart from errors about the real file.
    Database = (await import("better-sqlite3")).default;
    new Database(":memory:").close();
  } catch (err) {
    throw new DriverLoadError(oneLine(err));
  }
  const db = new Database(path);
  return {
    driver: "better-sqlite3",
    exec: (sql) => void db.exec(sql),
    prepare(sql) {
      const statement = db.prepare(sql);
      return {
        run: (...params) => ({ changes: statement.run(...params).changes }),
        get: (...params) => statement.get(...params) as SqliteRow | undefined,
        all: (...params) => statement.all(...params) as SqliteRow[],
      };
    },
    close: () => void db.close(),
  };
}
