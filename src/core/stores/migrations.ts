import type pg from "pg";
import { immediateTransaction, type SqliteDatabase } from "./sqlite-driver.js";

/**
 * The record store's schema, as numbered steps applied once each, in order,
 * to SQLite and PostgreSQL alike. `tollgate_schema_migrations` holds one row
 * per applied step; opening a store applies the missing ones under a lock
 * (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-level advisory
 * lock), so of several workers or replicas starting at once exactly one
 * migrates and the others find the work done. Each step runs in the same
 * transaction as its version row: a failure leaves the store at the step
 * before.
 *
 * Steps 1-3 are the schema of the first releases, which created their tables
 * with `CREATE TABLE IF NOT EXISTS` and added columns on open: on a store
 * written by one of them they find their tables and columns already there
 * and change nothing, so every key and owner is kept.
 *
 * A new step is appended, never edited: a store that applied step N never
 * runs it again.
 */
export interface Migration {
  readonly version: number;
  /** What the step does, stored beside its version. */
  readonly description: string;
  /** SQL, or a function for what SQLite cannot say in SQL (`ADD COLUMN IF NOT EXISTS`). */
  readonly sqlite: string | ((db: SqliteDatabase) => void);
  readonly postgres: string;
}

/** Newest-first key lists, all keys or one principal's. */
const KEY_LIST_INDEXES = `
  CREATE INDEX IF NOT EXISTS tollgate_api_keys_created ON tollgate_api_keys (created_at, id);
  CREATE INDEX IF NOT EXISTS tollgate_api_keys_principal ON tollgate_api_keys (principal, created_at, id);`;

/**
 * Steps whose SQL is the same in both dialects but for the type of
 * millisecond and counter columns: SQLite's INTEGER is 64-bit, PostgreSQL's
 * is not (BIGINT).
 */
function bothDialects(sql: (int64: string) => string): Pick<Migration, "sqlite" | "postgres"> {
  return { sqlite: sql("INTEGER"), postgres: sql("BIGINT") };
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "API keys, resource owners, store markers",
    ...bothDialects(
      (int64) => `
      CREATE TABLE IF NOT EXISTS tollgate_api_keys (
        id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, principal TEXT NOT NULL,
        attributes TEXT NOT NULL, created_at ${int64} NOT NULL, expires_at ${int64}, revoked_at ${int64});
      CREATE TABLE IF NOT EXISTS tollgate_owners (
        type TEXT NOT NULL, id TEXT NOT NULL, principal TEXT NOT NULL, attributes TEXT NOT NULL,
        created_at ${int64} NOT NULL, PRIMARY KEY (type, id));
      CREATE TABLE IF NOT EXISTS tollgate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);`,
    ),
  },
  {
    version: 2,
    description: "rotation: the previous secret of a key and the end of its grace",
    sqlite: (db) => {
      addSqliteColumns(db, "tollgate_api_keys", [["previous_hash", "TEXT"], ["previous_valid_until", "INTEGER"]]);
      db.exec("CREATE INDEX IF NOT EXISTS tollgate_api_keys_previous_hash ON tollgate_api_keys (previous_hash)");
    },
    postgres: `
      ALTER TABLE tollgate_api_keys ADD COLUMN IF NOT EXISTS previous_hash TEXT;
      ALTER TABLE tollgate_api_keys ADD COLUMN IF NOT EXISTS previous_valid_until BIGINT;
      CREATE INDEX IF NOT EXISTS tollgate_api_keys_previous_hash ON tollgate_api_keys (previous_hash);`,
  },
  {
    version: 3,
    description: "the readiness probe's row",
    ...bothDialects((int64) => `CREATE TABLE IF NOT EXISTS tollgate_probe (id INTEGER PRIMARY KEY, at ${int64} NOT NULL)`),
  },
  {
    version: 4,
    description: "key names and per-key limits; keys listed newest first",
    sqlite: (db) => {
      addSqliteColumns(db, "tollgate_api_keys", [["name", "TEXT"], ["limits", "TEXT"]]);
      db.exec(KEY_LIST_INDEXES);
    },
    postgres: `
      ALTER TABLE tollgate_api_keys ADD COLUMN IF NOT EXISTS name TEXT;
      ALTER TABLE tollgate_api_keys ADD COLUMN IF NOT EXISTS limits TEXT;
      ${KEY_LIST_INDEXES}`,
  },
  {
    version: 5,
    // key_id and model are '' rather than NULL: they are part of the primary
    // key, which is what makes every replica's INSERT ... ON CONFLICT add to
    // one row. Cost is kept in billionths of the currency, an integer, so
    // that sums are exact however the additions are ordered.
    description: "usage per hour, principal, key, model and upstream",
    ...bothDialects(
      (int64) => `
      CREATE TABLE IF NOT EXISTS tollgate_usage (
        hour ${int64} NOT NULL, principal TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL, upstream TEXT NOT NULL,
        requests ${int64} NOT NULL, prompt_tokens ${int64} NOT NULL, completion_tokens ${int64} NOT NULL, cost_nanos ${int64} NOT NULL,
        PRIMARY KEY (hour, principal, key_id, model, upstream));
      CREATE INDEX IF NOT EXISTS tollgate_usage_principal ON tollgate_usage (principal, hour);`,
    ),
  },
  {
    version: 6,
    // NULL for owners recorded before: routed as any request without a model.
    description: "the upstream a resource was created through (upstreams:)",
    sqlite: (db) => addSqliteColumns(db, "tollgate_owners", [["upstream", "TEXT"]]),
    postgres: "ALTER TABLE tollgate_owners ADD COLUMN IF NOT EXISTS upstream TEXT",
  },
];

/** The version a store is at once every step has run. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

const VERSION_TABLE = "tollgate_schema_migrations";

/**
 * Key of the transaction-level advisory lock held while migrating a
 * PostgreSQL store; the first releases held the same one while creating
 * their tables, so an older replica starting at the same moment waits too.
 * ("tollgate" in ASCII.)
 */
const POSTGRES_LOCK_KEY = "8390043843661231205";

/** Refused at open: the store was migrated by a newer Tollgate, whose tables this one may misread. */
export class SchemaTooNewError extends Error {
  readonly code = "ERR_SCHEMA_TOO_NEW";
  constructor(found: number) {
    super(`the record store's schema is at version ${found}, newer than this Tollgate's ${SCHEMA_VERSION}: upgrade Tollgate`);
    this.name = "SchemaTooNewError";
  }
}

/**
 * Brings a SQLite record store to {@link SCHEMA_VERSION}. A store already
 * there costs one read and takes no lock; otherwise the steps run in one
 * `BEGIN IMMEDIATE` transaction (the write lock is taken before the version
 * is read again, so two processes never run a step twice).
 *
 * @example migrateSqlite(db); // after applySqliteSettings (busy_timeout)
 */
export function migrateSqlite(db: SqliteDatabase, migrations: readonly Migration[] = MIGRATIONS): void {
  if (sqliteVersion(db) === lastVersion(migrations)) return;
  immediateTransaction(db, () => {
    db.exec(`CREATE TABLE IF NOT EXISTS ${VERSION_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
    // Read again under the lock: another process may have migrated meanwhile.
    const current = sqliteVersion(db);
    const record = db.prepare(`INSERT INTO ${VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)`);
    for (const step of pending(migrations, current)) {
      if (typeof step.sqlite === "string") db.exec(step.sqlite);
      else step.sqlite(db);
      record.run(step.version, step.description, Date.now());
    }
  });
}

/**
 * Brings a PostgreSQL record store to {@link SCHEMA_VERSION}, in one
 * transaction holding an advisory lock: replicas starting together migrate
 * once, one after the other. DDL is transactional in PostgreSQL, so a step
 * that fails leaves nothing half-done.
 */
export async function migratePostgres(client: pg.ClientBase, migrations: readonly Migration[] = MIGRATIONS): Promise<void> {
  await client.query("SELECT pg_advisory_xact_lock($1)", [POSTGRES_LOCK_KEY]);
  await client.query(`CREATE TABLE IF NOT EXISTS ${VERSION_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
  const { rows } = await client.query(`SELECT COALESCE(MAX(version), 0) AS version FROM ${VERSION_TABLE}`);
  const current = Number(rows[0]?.version ?? 0);
  for (const step of pending(migrations, current)) {
    await client.query(step.postgres);
    await client.query(`INSERT INTO ${VERSION_TABLE} (version, description, applied_at) VALUES ($1, $2, $3)`, [step.version, step.description, Date.now()]);
  }
}

/** The steps after `current`, in order; throws when the store is ahead of `migrations`. */
function pending(migrations: readonly Migration[], current: number): Migration[] {
  if (current > lastVersion(migrations)) throw new SchemaTooNewError(current);
  return migrations.filter((m) => m.version > current);
}

function lastVersion(migrations: readonly Migration[]): number {
  return migrations.length === 0 ? 0 : migrations[migrations.length - 1]!.version;
}

/** The highest applied step; 0 for a store that has none recorded (new, or from the first releases). */
function sqliteVersion(db: SqliteDatabase): number {
  const table = db.prepare("SELECT 1 AS present FROM sqlite_master WHERE type = 'table' AND name = ?").get(VERSION_TABLE);
  if (!table) return 0;
  return Number(db.prepare(`SELECT COALESCE(MAX(version), 0) AS version FROM ${VERSION_TABLE}`).get()?.version ?? 0);
}

/** Adds the columns `table` lacks (SQLite has no `ADD COLUMN IF NOT EXISTS`). */
function addSqliteColumns(db: SqliteDatabase, table: string, columns: readonly [name: string, type: string][]): void {
  const present = new Set(db.prepare(`PRAGMA table_info(${table})`).all().map((row) => String(row.name)));
  for (const [name, type] of columns) if (!present.has(name)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${name} ${type}`);
}
