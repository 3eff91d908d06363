import { openSqliteQuotaStoreHere, type SqliteQuotaStore, type SqliteQuotaStoreOptions } from "./sqlite-local.js";
import { openSqliteQuotaThread } from "./sqlite-thread.js";

export type { SqliteQuotaStore, SqliteQuotaStoreOptions } from "./sqlite-local.js";

/**
 * Opens the SQLite quota store: the store of sqlite-local.ts, in a worker
 * thread (sqlite-thread.ts) unless `thread: false`, so that a commit's wait
 * for the disk never holds the gateway's requests.
 *
 * @example
 * const store = await openSqliteQuotaStore({ dbPath: "./data/quota.db" });
 */
export function openSqliteQuotaStore(options: SqliteQuotaStoreOptions): Promise<SqliteQuotaStore> {
  // A clock of the caller's (tests) cannot be sent to a thread.
  if (options.thread === false || options.now) return openSqliteQuotaStoreHere(options);
  return openSqliteQuotaThread(options);
}
