/**
 * `tollgate keys`, run as a user runs it: the real CLI in a child process,
 * against a config file whose storage is a temporary SQLite file (and once
 * PostgreSQL). What is checked is what the user sees on stdout, stderr and
 * in the exit code, and what the store holds afterwards.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, describe, test } from "node:test";
import { createApiKey, hashApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { StorageConfig } from "../../src/core/config/schema.js";
import { requireService } from "../support/services.js";
import { distFile } from "../support/gateway.js";
import { scopedPostgres } from "../support/postgres.js";
import { storedKeys } from "../support/record-stores.js";

const repoRoot = resolve(import.meta.dirname, "../..");
// The built CLI (as a user runs it; `npm test` builds first): a tsx-compiled
// src/cli/main.ts per spawn made this file slower than its timeout on a busy machine.
const mainJs = distFile("cli/main.js");

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-cli-keys-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `tollgate ...args` to completion. */
function tollgate(args: string[], options: { cwd?: string } = {}): Promise<Run> {
  return new Promise((resolvePromise) => {
    execFile(
      process.execPath,
      [mainJs, ...args],
      { cwd: options.cwd ?? repoRoot, timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolvePromise({ code, stdout, stderr });
      },
    );
  });
}

/** A config file whose storage is a fresh SQLite file. */
function sqliteConfig(): { file: string; storage: StorageConfig } {
  const dir = join(tempRoot, `case-${++counter}`);
  mkdirSync(dir, { recursive: true });
  const dbPath = join(dir, "data", "keys.db");
  const file = join(dir, "tollgate.yaml");
  writeFileSync(file, `storage:\n  type: sqlite\n  db_path: ${JSON.stringify(dbPath)}\n`);
  return { file, storage: { type: "sqlite", db_path: dbPath } };
}

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l !== "");
}

describe("tollgate keys create", { concurrency: true }, () => {
  test("prints the new key alone on stdout and the details on stderr", async () => {
    const { file, storage } = sqliteConfig();
    const run = await tollgate(["keys", "create", "--config", file, "--principal", "alice", "--attr", "roles=admin,user", "--attr", "teams=ml", "--expires", "30d"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^tg_[A-Za-z0-9_-]{43}\n$/);
    const key = run.stdout.trim();
    const [record] = await storedKeys(storage);
    assert.ok(record);
    assert.equal(record.hash, hashApiKey(key));
    assert.equal(record.principal, "alice");
    assert.deepEqual(record.attributes, { roles: ["admin", "user"], teams: ["ml"] });
    assert.ok(Math.abs(record.expiresAt! - (record.createdAt + 30 * 86_400_000)) < 1000);
    assert.ok(run.stderr.includes(record.id));
    assert.match(run.stderr, /principal: +alice/);
    assert.match(run.stderr, /attributes: +roles=admin,user teams=ml/);
    assert.match(run.stderr, /expires: +\d{4}-\d\d-\d\dT/);
    assert.ok(!run.stderr.includes(key), "the key is printed once, on stdout only");
  });

  test("a key without --expires never expires", async () => {
    const { file, storage } = sqliteConfig();
    const run = await tollgate(["keys", "create", "-c", file, "-p", "svc"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /expires: +never/);
    assert.equal((await storedKeys(storage))[0]?.expiresAt, undefined);
  });

  test("a bad --expires fails with exit 1, one line on stderr, and stores nothing", async () => {
    const { file, storage } = sqliteConfig();
    for (const expires of ["0d", "30", "tomorrow"]) {
      const run = await tollgate(["keys", "create", "--config", file, "--principal", "alice", "--expires", expires]);
      assert.equal(run.code, 1);
      assert.equal(run.stdout, "");
      assert.equal(lines(run.stderr).length, 1, run.stderr);
      assert.match(run.stderr, /^tollgate: invalid duration/);
    }
    assert.deepEqual(await storedKeys(storage), []);
  });

  test("a bad --limit or an empty --name fails with exit 1, one line naming the option, and stores nothing", async () => {
    const { file, storage } = sqliteConfig();
    const cases: [string[], RegExp][] = [
      [["--limit", "spend=25/week"], /^tollgate: --limit spend=25\/week: .*"month"/],
      [["--limit", "requests=lots/day"], /^tollgate: --limit requests=lots\/day: lots is not a number/],
      [["--limit", "requests=-1/day"], /^tollgate: --limit requests=-1\/day: /],
      [["--limit", "requests=5/day", "--limit", "calls=5/day"], /^tollgate: --limit calls=5\/day: expected KIND=N\/PERIOD/],
      [["--name", " "], /^tollgate: --name must not be empty/],
    ];
    for (const [args, reason] of cases) {
      const run = await tollgate(["keys", "create", "--config", file, "--principal", "alice", ...args]);
      assert.equal(run.code, 1, args.join(" "));
      assert.equal(run.stdout, "");
      assert.equal(lines(run.stderr).length, 1, run.stderr);
      assert.match(run.stderr, reason);
    }
    assert.deepEqual(await storedKeys(storage), []);
  });

  test("a bad --attr fails with exit 1 and one line saying why", async () => {
    const { file } = sqliteConfig();
    const run = await tollgate(["keys", "create", "--config", file, "--principal", "alice", "--attr", "roles"]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, "");
    assert.deepEqual(lines(run.stderr), ['tollgate: invalid attribute "roles": expected name=value']);
  });

  test("a missing --principal fails with a non-zero exit and one line naming the option", async () => {
    const { file } = sqliteConfig();
    const run = await tollgate(["keys", "create", "--config", file]);
    assert.notEqual(run.code, 0);
    assert.equal(run.stdout, "");
    assert.equal(lines(run.stderr).length, 1, run.stderr);
    assert.match(run.stderr, /--principal/);
  });

  test("an invalid config file fails with the config's problems and creates nothing", async () => {
    const file = join(tempRoot, `bad-${++counter}.yaml`);
    writeFileSync(file, "storage:\n  type: mysql\n");
    const run = await tollgate(["keys", "create", "--config", file, "--principal", "alice"]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, "");
    assert.match(run.stderr, /invalid configuration/);
    assert.match(run.stderr, /storage\.type/);
  });

  test("without --config the keys live in ./data/tollgate.db of the current directory", async () => {
    const cwd = join(tempRoot, `cwd-${++counter}`);
    mkdirSync(cwd);
    const run = await tollgate(["keys", "create", "--principal", "local"], { cwd });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(existsSync(join(cwd, "data", "tollgate.db")));
    const [record] = await storedKeys({ type: "sqlite", db_path: join(cwd, "data", "tollgate.db") });
    assert.equal(record?.principal, "local");
  });

  test("a relative db_path in --config is the config's folder's, wherever the command runs", async () => {
    const folder = join(tempRoot, `relative-${++counter}`);
    const elsewhere = join(tempRoot, `elsewhere-${counter}`);
    mkdirSync(folder);
    mkdirSync(elsewhere);
    const file = join(folder, "tollgate.yaml");
    writeFileSync(file, "storage: {type: sqlite, db_path: ./data/keys.db}\n");
    const run = await tollgate(["keys", "create", "--config", file, "--principal", "far"], { cwd: elsewhere });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(!existsSync(join(elsewhere, "data")), "nothing is written under the working directory");
    const [record] = await storedKeys({ type: "sqlite", db_path: join(folder, "data", "keys.db") });
    assert.equal(record?.principal, "far");
  });
});

describe("tollgate keys list", { concurrency: true }, () => {
  test("shows each key's id, prefix, principal, attributes and status, and never the key or its hash", async () => {
    const { file, storage } = sqliteConfig();
    const created = await tollgate(["keys", "create", "-c", file, "-p", "alice", "-a", "roles=admin"]);
    const key = created.stdout.trim();
    const run = await tollgate(["keys", "list", "--config", file]);
    assert.equal(run.code, 0, run.stderr);
    const [header, row, ...rest] = lines(run.stdout);
    assert.match(header!, /^ID +PREFIX +PRINCIPAL +ATTRIBUTES +CREATED +EXPIRES +STATUS$/);
    assert.deepEqual(rest, []);
    const [record] = await storedKeys(storage);
    assert.match(row!, new RegExp(`^${record!.id} +${key.slice(0, 10)} +alice +roles=admin +\\S+Z +never +active$`));
    assert.ok(!run.stdout.includes(key));
    assert.ok(!run.stdout.includes(hashApiKey(key)));
  });

  test("--json prints an array with status and ISO times, without the hash", async () => {
    const { file, storage } = sqliteConfig();
    const store = await openRecordStore(storage);
    const past = Date.now() - 60_000;
    const expired = await createApiKey(store, { principal: "old", now: past, expiresAt: past + 1000 });
    const active = await createApiKey(store, { principal: "new", attributes: { teams: ["a", "b"] }, name: "laptop", limits: [{ spend: 25, period: "month" }] });
    await store.close();
    const run = await tollgate(["keys", "list", "--config", file, "--json"]);
    assert.equal(run.code, 0, run.stderr);
    const listed = JSON.parse(run.stdout) as Record<string, unknown>[];
    assert.deepEqual(listed, [
      {
        id: expired.record.id,
        prefix: expired.key.slice(0, 10),
        principal: "old",
        name: null,
        attributes: {},
        limits: [],
        created_at: new Date(past).toISOString(),
        expires_at: new Date(past + 1000).toISOString(),
        revoked_at: null,
        status: "expired",
      },
      {
        id: active.record.id,
        prefix: active.key.slice(0, 10),
        principal: "new",
        name: "laptop",
        attributes: { teams: ["a", "b"] },
        limits: [{ spend: 25, period: "month" }],
        created_at: new Date(active.record.createdAt).toISOString(),
        expires_at: null,
        revoked_at: null,
        status: "active",
      },
    ]);
    assert.ok(!run.stdout.includes(expired.record.hash) && !run.stdout.includes(active.record.hash));
  });

  test("an empty store lists nothing on stdout and says how to create a key on stderr", async () => {
    const { file } = sqliteConfig();
    const run = await tollgate(["keys", "list", "--config", file]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, "");
    assert.match(run.stderr, /tollgate keys create/);
    const json = await tollgate(["keys", "list", "--config", file, "--json"]);
    assert.deepEqual(JSON.parse(json.stdout), []);
  });
});

describe("tollgate keys revoke", { concurrency: true }, () => {
  test("revoking by id marks the key revoked, and list shows it", async () => {
    const { file, storage } = sqliteConfig();
    await tollgate(["keys", "create", "-c", file, "-p", "alice"]);
    const [record] = await storedKeys(storage);
    const run = await tollgate(["keys", "revoke", "--config", file, record!.id]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, `revoked API key ${record!.id} (principal alice)\n`);
    assert.notEqual((await storedKeys(storage))[0]?.revokedAt, undefined);
    const list = await tollgate(["keys", "list", "--config", file]);
    assert.match(lines(list.stdout)[1]!, / revoked$/);
  });

  test("revoking by the full key works too", async () => {
    const { file, storage } = sqliteConfig();
    const key = (await tollgate(["keys", "create", "-c", file, "-p", "bob"])).stdout.trim();
    const run = await tollgate(["keys", "revoke", "--config", file, key]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^revoked API key key_[0-9a-f]{16} \(principal bob\)\n$/);
    assert.notEqual((await storedKeys(storage))[0]?.revokedAt, undefined);
  });

  test("revoking a key again succeeds and says when it was first revoked", async () => {
    const { file, storage } = sqliteConfig();
    await tollgate(["keys", "create", "-c", file, "-p", "alice"]);
    const [record] = await storedKeys(storage);
    await tollgate(["keys", "revoke", "-c", file, record!.id]);
    const first = (await storedKeys(storage))[0]!.revokedAt!;
    const again = await tollgate(["keys", "revoke", "-c", file, record!.id]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`was already revoked at ${new Date(first).toISOString()}`));
  });

  test("an unknown id or key fails with exit 1 and \"no such key\"", async () => {
    const { file } = sqliteConfig();
    for (const ref of ["key_0000000000000000", `tg_${"x".repeat(43)}`]) {
      const run = await tollgate(["keys", "revoke", "--config", file, ref]);
      assert.equal(run.code, 1);
      assert.equal(run.stdout, "");
      assert.equal(run.stderr, "tollgate: no such key\n");
    }
  });
});

test("every keys command answers --help with its usage and exit 0", async () => {
  for (const args of [["keys"], ["keys", "create"], ["keys", "list"], ["keys", "rotate"], ["keys", "revoke"]]) {
    const run = await tollgate([...args, "--help"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, new RegExp(`^Usage: tollgate ${args.join(" ")} `));
  }
});

test("create, list, rotate and revoke work the same against a PostgreSQL store", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const { url: scoped, schema, admin, drop } = await scopedPostgres(url, "cli");
  try {
    const file = join(tempRoot, `pg-${++counter}.yaml`);
    writeFileSync(file, `storage:\n  type: postgres\n  url: ${JSON.stringify(scoped)}\n`);

    const created = await tollgate(["keys", "create", "-c", file, "-p", "pg-alice", "-a", "roles=admin"]);
    assert.equal(created.code, 0, created.stderr);
    const key = created.stdout.trim();
    const listed = JSON.parse((await tollgate(["keys", "list", "-c", file, "--json"])).stdout) as { id: string; principal: string; status: string }[];
    assert.deepEqual(listed.map((k) => [k.principal, k.status]), [["pg-alice", "active"]]);
    const id = listed[0]!.id;
    const rotated = await tollgate(["keys", "rotate", "-c", file, id]);
    assert.equal(rotated.code, 0, rotated.stderr);
    const { rows: afterRotation } = await admin.query(`SELECT id, hash FROM "${schema}".tollgate_api_keys`);
    assert.deepEqual(afterRotation, [{ id, hash: hashApiKey(rotated.stdout.trim()) }]);
    const revoked = await tollgate(["keys", "revoke", "-c", file, rotated.stdout.trim()]);
    assert.equal(revoked.code, 0, revoked.stderr);
    const { rows } = await admin.query(`SELECT principal, revoked_at FROM "${schema}".tollgate_api_keys`);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].principal, "pg-alice");
    assert.notEqual(rows[0].revoked_at, null);
  } finally {
    await drop();
  }
});
