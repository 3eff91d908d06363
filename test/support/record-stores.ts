import { join } from "node:path";
import type { TestContext } from "node:test";
import type { StorageConfig } from "../../src/core/config/schema.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { ApiKeyRecord } from "../../src/core/stores/types.js";
import { scopedPostgres } from "./postgres.js";
import { requireService } from "./services.js";

/** A record store a test may use: its `storage` config, and how to remove it. */
export interface PreparedStorage {
  readonly storage: StorageConfig;
  cleanup(): Promise<void>;
}

let serial = 0;

/**
 * The two record store backends, for tests that run once on each: a fresh
 * SQLite file under `dir`, and a fresh scoped PostgreSQL schema (undefined,
 * the test skipped, where PostgreSQL is not reachable outside CI).
 */
export const storageBackends: readonly { name: string; prepare(t: TestContext, dir: string): Promise<PreparedStorage | undefined> }[] = [
  {
    name: "sqlite",
    async prepare(_t, dir) {
      return { storage: { type: "sqlite", db_path: join(dir, `store-${process.pid}-${++serial}`, "keys.db") }, cleanup: async () => {} };
    },
  },
  {
    name: "postgres",
    async prepare(t) {
      const url = await requireService(t, "postgres");
      if (!url) return undefined;
      const pg = await scopedPostgres(url, "keys");
      return { storage: { type: "postgres", url: pg.url }, cleanup: pg.drop };
    },
  },
];

/** Every API key the store of `storage` holds, oldest first. */
export async function storedKeys(storage: StorageConfig): Promise<ApiKeyRecord[]> {
  const store = await openRecordStore(storage);
  try {
    return await store.listApiKeys();
  } finally {
    await store.close();
  }
}
