/**
 * `tollgate keys rotate`, run as a user runs it: the built CLI in a child
 * process against a config whose storage is a temporary SQLite file. (Over
 * real HTTP and on PostgreSQL: test/cli/keys-live.test.ts and
 * test/cli/keys.test.ts.)
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import type { StorageConfig } from "../../src/core/config/schema.js";
import { hashApiKey } from "../../src/core/keys.js";
import { distFile } from "../support/gateway.js";
import { storedKeys } from "../support/record-stores.js";

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-cli-rotate-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;

function tollgate(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [distFile("cli/main.js"), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/** A config file whose storage is a fresh SQLite file. */
function sqliteConfig(): { file: string; storage: StorageConfig } {
  const dbPath = join(tempRoot, `case-${++counter}`, "keys.db");
  const file = join(tempRoot, `case-${counter}.yaml`);
  writeFileSync(file, `storage: {type: sqlite, db_path: ${JSON.stringify(dbPath)}}\n`);
  return { file, storage: { type: "sqlite", db_path: dbPath } };
}

const lines = (text: string) => text.split("\n").filter((l) => l !== "");

describe("tollgate keys rotate", { concurrency: true }, () => {
  test("prints the new secret alone on stdout; the key keeps its id, principal, attributes and expiry", async () => {
    const { file, storage } = sqliteConfig();
    const created = await tollgate(["keys", "create", "--config", file, "--principal", "rot", "--attr", "roles=user", "--expires", "30d"]);
    assert.equal(created.code, 0, created.stderr);
    const [before] = await storedKeys(storage);
    const run = await tollgate(["keys", "rotate", "--config", file, before!.id, "--grace", "1h"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^tg_[A-Za-z0-9_-]{43}\n$/);
    const key = run.stdout.trim();
    assert.notEqual(key, created.stdout.trim());
    assert.match(run.stderr, new RegExp(`^rotated API key ${before!.id} \\(principal rot\\)`));
    assert.match(run.stderr, /the old key keeps working until \d{4}-\d\d-\d\dT/);
    assert.ok(!run.stderr.includes(key));
    const [after] = await storedKeys(storage);
    assert.deepEqual(after, { ...before!, hash: hashApiKey(key), prefix: key.slice(0, 10) });
  });

  test("an unknown or revoked id fails with exit 1 and one line; a bad --grace fails before touching the store", async () => {
    const { file, storage } = sqliteConfig();
    assert.equal((await tollgate(["keys", "create", "--config", file, "--principal", "gone"])).code, 0);
    const [record] = await storedKeys(storage);
    assert.equal((await tollgate(["keys", "revoke", "--config", file, record!.id])).code, 0);
    for (const args of [[record!.id], ["key_0000000000000000"]]) {
      const run = await tollgate(["keys", "rotate", "--config", file, ...args]);
      assert.equal(run.code, 1);
      assert.equal(run.stdout, "");
      assert.equal(run.stderr, "tollgate: no such key, or it is revoked\n");
    }
    const bad = await tollgate(["keys", "rotate", "--config", file, record!.id, "--grace", "soon"]);
    assert.equal(bad.code, 1);
    assert.equal(lines(bad.stderr).length, 1);
    assert.match(bad.stderr, /invalid duration "soon"/);
    assert.equal((await storedKeys(storage))[0]!.hash, record!.hash);
  });
});
