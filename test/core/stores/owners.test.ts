import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import { openPostgresRecordStore } from "../../../src/core/stores/postgres.js";
import { openSqliteRecordStore } from "../../../src/core/stores/sqlite.js";
import type { RecordStore } from "../../../src/core/stores/types.js";
import { scopedPostgres } from "../../support/postgres.js";
import { requireService } from "../../support/services.js";

// The owner records of resources created through the gateway, on both stores.

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-owners-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));

const backends: { name: string; open(t: TestContext): Promise<{ store: RecordStore; reopen(): Promise<RecordStore>; cleanup(): Promise<void> } | undefined> }[] = [
  {
    name: "sqlite",
    async open() {
      const path = join(tempRoot, `${Math.random().toString(36).slice(2)}.db`);
      return { store: await openSqliteRecordStore(path), reopen: () => openSqliteRecordStore(path), cleanup: async () => {} };
    },
  },
  {
    name: "postgres",
    async open(t) {
      const url = await requireService(t, "postgres");
      if (!url) return undefined;
      const pg = await scopedPostgres(url, "owners");
      return { store: await openPostgresRecordStore(pg.url), reopen: () => openPostgresRecordStore(pg.url), cleanup: () => pg.drop() };
    },
  },
];

for (const backend of backends) {
  describe(`owner records (${backend.name})`, () => {
    test("an owner is recorded, found by type and id, visible to another connection, and forgotten", async (t) => {
      const opened = await backend.open(t);
      if (!opened) return;
      const { store } = opened;
      const other = await opened.reopen();
      try {
        await store.putOwner({ type: "file", id: "file-1", principal: "alice", attributes: { teams: ["ml"] }, createdAt: 1000 });
        assert.deepEqual(await other.findOwner("file", "file-1"), { type: "file", id: "file-1", principal: "alice", attributes: { teams: ["ml"] }, createdAt: 1000 });
        assert.equal(await other.findOwner("vector_store", "file-1"), undefined, "keyed by type too");
        assert.equal(await other.findOwner("file", "file-2"), undefined);
        await store.putOwner({ type: "file", id: "file-2", principal: "bob", attributes: {}, createdAt: 2000 });
        const found = await other.findOwners("file", ["file-1", "file-2", "file-3", "file-1"]);
        assert.deepEqual([...found.keys()].sort(), ["file-1", "file-2"]);
        assert.equal(found.get("file-2")?.principal, "bob");
        assert.deepEqual(await other.findOwners("file", []), new Map());
        assert.equal(await store.deleteOwner("file", "file-1"), true);
        assert.equal(await store.deleteOwner("file", "file-1"), false);
        assert.equal(await other.findOwner("file", "file-1"), undefined);
      } finally {
        await other.close();
        await store.close();
        await opened.cleanup();
      }
    });

    test("recording the same id again replaces the owner", async (t) => {
      const opened = await backend.open(t);
      if (!opened) return;
      const { store } = opened;
      try {
        await store.putOwner({ type: "batch", id: "b1", principal: "alice", attributes: {}, createdAt: 1 });
        await store.putOwner({ type: "batch", id: "b1", principal: "carol", attributes: { roles: ["x"] }, createdAt: 2 });
        assert.equal((await store.findOwner("batch", "b1"))?.principal, "carol");
      } finally {
        await store.close();
        await opened.cleanup();
      }
    });
  });
}
