import pg from "pg";
import { API_KEY_COLUMNS, apiKeyForSecret, apiKeyFromRow, apiKeyRowValues, DuplicateApiKeyError, KEYS_ISSUED_MARKER } from "../keys.js";
import { migratePostgres } from "./migrations.js";
import { ownerFromRow } from "./owners.js";
import type { OwnerRecord, RecordStore } from "./types.js";
import { mergeUsage, usageRowFrom, usageRowValues, usageSelect, usageUpsert } from "./usage-sql.js";

/**
 * Connections per process. Key lookups are single indexed reads and the
 * gateway caches them, so a few connections serve thousands of requests a
 * second; a small pool keeps N gateway workers well under the server's
 * `max_connections`.
 */
const POOL_SIZE = 4;
/**
 * Give up connecting (or waiting for a free pooled connection) after this
 * long, so a down database becomes a 503 within ~2 s, not a hang.
 */
const CONNECT_TIMEOUT_MS = 2000;
/**
 * Give up on a query after this long: `statement_timeout` makes the server
 * cancel it (its locks go with it), `query_timeout` gives up client side too
 * (a stalled network never answers the cancel). Every statement here is one
 * indexed row or a short list: milliseconds when the database is well.
 */
const QUERY_TIMEOUT_MS = 2000;
/**
 * Key of the transaction-level advisory lock held while deciding whether to
 * create the first admin key, so that of several replicas starting on an
 * empty database exactly one creates it. ("tollgatf": the schema lock's
 * neighbour.)
 */
const FIRST_KEY_LOCK_KEY = "8390043843661231206";

const OWNER_COLUMNS = "type, id, principal, attributes, created_at, upstream";

const COLUMNS = API_KEY_COLUMNS;
const COLUMN_PLACEHOLDERS = COLUMNS.split(",").map((_, i) => `$${i + 1}`).join(", ");

/** PostgreSQL's code for a unique-constraint violation. */
const UNIQUE_VIOLATION = "23505";

/**
 * The record store in PostgreSQL, for several gateway replicas.
 *
 * Tables are named `tollgate_*` and created in the first schema of the
 * connection's `search_path` (normally `public`); to keep them in their own
 * schema, add `?options=-c%20search_path%3Dtollgate` to the URL (the schema
 * must exist). Every write is one statement, committed on return, so every
 * replica sees a revocation as soon as `revokeApiKey` resolves.
 *
 * @example
 * const store = await openPostgresRecordStore("postgres://tollgate@db/tollgate");
 */
export async function openPostgresRecordStore(url: string): Promise<RecordStore> {
  const pool = new pg.Pool({
    connectionString: url,
    max: POOL_SIZE,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    statement_timeout: QUERY_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    application_name: "tollgate",
  });
  // An idle connection dropped by the server is reported here; without a
  // listener pg would crash the process. The pool replaces the connection and
  // the next query that cannot get one fails on its own, so nothing to do.
  pool.on("error", () => {});

  try {
    await createSchema(pool);
  } catch (err) {
    await pool.end().catch(() => {});
    // Refused at start-up with one line naming the setting, never the
    // password (docs/operations.md, "PostgreSQL down at start").
    throw new Error(`storage.url: cannot use PostgreSQL at ${withoutPassword(url)}: ${oneLine(err)}`, { cause: err });
  }

  let closed = false;
  const query = async (text: string, values: unknown[] = []) => {
    if (closed) throw new Error("the record store is closed");
    return (await pool.query(text, values)).rows as Record<string, unknown>[];
  };

  return {
    kind: "postgres",
    async insertApiKey(record) {
      try {
        await query(`INSERT INTO tollgate_api_keys (${COLUMNS}) VALUES (${COLUMN_PLACEHOLDERS})`, apiKeyRowValues(record));
      } catch (err) {
        if ((err as { code?: unknown })?.code === UNIQUE_VIOLATION) throw new DuplicateApiKeyError({ cause: err });
        throw err;
      }
      await query(MARK_ISSUED, [KEYS_ISSUED_MARKER]);
    },
    async insertFirstApiKey(record) {
      if (closed) throw new Error("the record store is closed");
      return inTransaction(pool, async (client) => {
        await client.query("SELECT pg_advisory_xact_lock($1)", [FIRST_KEY_LOCK_KEY]);
        const held = await client.query(
          "SELECT 1 FROM tollgate_meta WHERE name = $1 UNION ALL SELECT 1 FROM tollgate_api_keys LIMIT 1",
          [KEYS_ISSUED_MARKER],
        );
        if (held.rows.length > 0) return false;
        await client.query(`INSERT INTO tollgate_api_keys (${COLUMNS}) VALUES (${COLUMN_PLACEHOLDERS})`, apiKeyRowValues(record));
        await client.query(MARK_ISSUED, [KEYS_ISSUED_MARKER]);
        return true;
      });
    },
    async findApiKeyByHash(hash) {
      const [row] = await query(
        `SELECT ${COLUMNS}, previous_valid_until FROM tollgate_api_keys WHERE hash = $1 OR previous_hash = $1 ORDER BY hash = $1 DESC LIMIT 1`,
        [hash],
      );
      return row ? apiKeyForSecret(row, hash) : undefined;
    },
    async rotateApiKey(id, secret, previousValidUntil) {
      const [row] = await query(
        "UPDATE tollgate_api_keys SET previous_hash = CASE WHEN $1::bigint IS NULL THEN NULL ELSE hash END, previous_valid_until = $1, hash = $2, prefix = $3 " +
          `WHERE id = $4 AND revoked_at IS NULL RETURNING ${COLUMNS}`,
        [previousValidUntil ?? null, secret.hash, secret.prefix, id],
      );
      return row ? apiKeyFromRow(row) : undefined;
    },
    async listApiKeys() {
      return (await query(`SELECT ${COLUMNS} FROM tollgate_api_keys ORDER BY created_at, id`)).map(apiKeyFromRow);
    },
    async pageApiKeys(page) {
      const values: unknown[] = [];
      const where: string[] = [];
      if (page.principal !== undefined) {
        values.push(page.principal);
        where.push(`principal = $${values.length}`);
      }
      if (page.after !== undefined) {
        values.push(page.after);
        // Newest first: the page starts below the previous page's last (created_at, id).
        where.push(`(created_at, id) < (SELECT created_at, id FROM tollgate_api_keys WHERE id = $${values.length})`);
      }
      values.push(page.limit + 1);
      const rows = await query(
        `SELECT ${COLUMNS} FROM tollgate_api_keys ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at DESC, id DESC LIMIT $${values.length}`,
        values,
      );
      return { keys: rows.slice(0, page.limit).map(apiKeyFromRow), hasMore: rows.length > page.limit };
    },
    async getApiKey(id) {
      const [row] = await query(`SELECT ${COLUMNS} FROM tollgate_api_keys WHERE id = $1`, [id]);
      return row ? apiKeyFromRow(row) : undefined;
    },
    async recordUsage(deltas) {
      if (closed) throw new Error("the record store is closed");
      const rows = mergeUsage(deltas);
      if (rows.length === 0) return;
      const upsert = usageUpsert((n) => `$${n}`);
      await inTransaction(pool, async (client) => {
        for (const row of rows) await client.query(upsert, usageRowValues(row));
      });
    },
    async usage(usageQuery) {
      const { text, values } = usageSelect(usageQuery, (n) => `$${n}`);
      return (await query(text, values)).map((row) => usageRowFrom(usageQuery.groupBy, row));
    },
    async revokeApiKey(idOrHash, at) {
      // COALESCE keeps the first revocation time when a key is revoked twice.
      const [row] = await query(
        `UPDATE tollgate_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 OR hash = $2 RETURNING ${COLUMNS}`,
        [at, idOrHash],
      );
      return row ? apiKeyFromRow(row) : undefined;
    },
    async countActiveApiKeys(now) {
      const [row] = await query(
        "SELECT COUNT(*) AS n FROM tollgate_api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
        [now],
      );
      return Number(row?.n ?? 0);
    },
    async putOwner(record) {
      await query(
        "INSERT INTO tollgate_owners (type, id, principal, attributes, created_at, upstream) VALUES ($1, $2, $3, $4, $5, $6) " +
          "ON CONFLICT (type, id) DO UPDATE SET principal = EXCLUDED.principal, attributes = EXCLUDED.attributes, created_at = EXCLUDED.created_at, upstream = EXCLUDED.upstream",
        [record.type, record.id, record.principal, JSON.stringify(record.attributes), record.createdAt, record.upstream ?? null],
      );
    },
    async findOwner(type, id) {
      const [row] = await query(`SELECT ${OWNER_COLUMNS} FROM tollgate_owners WHERE type = $1 AND id = $2`, [type, id]);
      return row ? ownerFromRow(row) : undefined;
    },
    async findOwners(type, ids) {
      const found = new Map<string, OwnerRecord>();
      if (ids.length === 0) return found;
      const rows = await query(`SELECT ${OWNER_COLUMNS} FROM tollgate_owners WHERE type = $1 AND id = ANY($2::text[])`, [type, [...ids]]);
      for (const row of rows) found.set(String(row.id), ownerFromRow(row));
      return found;
    },
    async deleteOwner(type, id) {
      const rows = await query("DELETE FROM tollgate_owners WHERE type = $1 AND id = $2 RETURNING id", [type, id]);
      return rows.length > 0;
    },
    async ping() {
      // A committed write, not SELECT 1: a read-only server (a standby, a
      // full disk, default_transaction_read_only) still answers reads.
      await query("INSERT INTO tollgate_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at", [Date.now()]);
    },
    async close() {
      if (closed) return;
      closed = true;
      await pool.end();
    },
  };
}

/** Says the store has held an API key (see `KEYS_ISSUED_MARKER`). */
const MARK_ISSUED = "INSERT INTO tollgate_meta (name, value) VALUES ($1, 'true') ON CONFLICT (name) DO NOTHING";

async function createSchema(pool: pg.Pool): Promise<void> {
  await inTransaction(pool, (client) => migratePostgres(client));
}

/** Runs `work` in one transaction on one connection: committed when it resolves, rolled back when it throws. */
async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let failure: Error | undefined;
  try {
    await client.query("BEGIN");
    const result = await work(client);
    await client.query("COMMIT");
    return result;
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    // A connection that failed mid-transaction is discarded, not reused.
    client.release(failure);
  }
}

/** `postgres://u:secret@h/db` as `postgres://u:***@h/db`; a URL that does not parse is not shown at all. */
function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== "") parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(the configured URL)";
  }
}

/** An error's message on one line: the CLI reports failures in one line. */
function oneLine(err: unknown): string {
  const e = err as { message?: unknown; code?: unknown };
  const message = String(e?.message ?? err).replace(/\s+/g, " ").trim();
  return message !== "" ? message : String(e?.code ?? "unknown error");
}
