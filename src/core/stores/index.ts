import type { StorageConfig } from "../config/schema.js";
import { openPostgresRecordStore } from "./postgres.js";
import { openSqliteRecordStore } from "./sqlite.js";
import type { RecordStore } from "./types.js";

export type { ApiKeyPage, ApiKeyPageQuery, ApiKeyRecord, KeyLimit, RecordStore, UsageDelta, UsageGroup, UsageQuery, UsageRow } from "./types.js";
export { SchemaTooNewError, SCHEMA_VERSION } from "./migrations.js";

/**
 * Opens the record store `storage` describes, bringing its schema to this
 * release's version first (stores/migrations.ts; safe when several
 * processes start at once). The caller
 * owns it and must `close()` it.
 *
 * @example
 * const store = await openRecordStore({ type: "sqlite", db_path: "./data/tollgate.db" });
 * try { console.log(await store.countActiveApiKeys(Date.now())); } finally { await store.close(); }
 */
export async function openRecordStore(config: StorageConfig): Promise<RecordStore> {
  switch (config.type) {
    case "sqlite":
      return openSqliteRecordStore(config.db_path);
    case "postgres":
      return openPostgresRecordStore(config.url);
  }
}
