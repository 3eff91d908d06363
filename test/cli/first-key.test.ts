/**
 * The first admin key, as operators meet it: `tollgate serve` processes on
 * one record store. It is created only when the store never held a key,
 * exactly once however many replicas start together, and shown once (stderr,
 * or the file named by --admin-key-file).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { StorageConfig } from "../../src/core/config/schema.js";
import { distFile, linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { storageBackends, storedKeys } from "../support/record-stores.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

const KEY = /tg_[A-Za-z0-9_-]{43}/g;
const CREATED = "created the first admin API key";
const NOT_CREATED = "the record store holds or held an API key: no first admin key created";

let upstream: UpstreamProcess;
let dir: string;
before(async () => {
  upstream = await startUpstreamProcess();
  dir = mkdtempSync(join(tmpdir(), "tollgate-first-key-"));
});
after(async () => {
  await upstream?.close();
  rmSync(dir, { recursive: true, force: true });
});

let serial = 0;

function gatewayConfig(storage: StorageConfig) {
  return {
    server: { auth: { provider_config: { type: "api_key" } } },
    upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
    storage,
    logging: { level: "debug" },
  };
}

/** Waits until the process has decided about the first key, either way; true when it created one. */
async function decided(gateway: GatewayProcess): Promise<boolean> {
  const line = await gateway.waitForLog((l) => l.msg === CREATED || l.msg === NOT_CREATED, 15_000);
  return line.msg === CREATED;
}

async function principalOf(gateway: GatewayProcess, key: string): Promise<string | number> {
  const tag = `first-key-${++serial}`;
  const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${key}`, "x-test-call": tag } });
  await res.arrayBuffer();
  if (res.status !== 200) return res.status;
  const seen = await upstream.waitForRequest((r) => r.headers["x-test-call"] === tag);
  return String(seen.headers["x-tollgate-principal"]);
}

describe("the first admin key", { timeout: 240_000 }, () => {
  for (const backend of storageBackends) {
    test(`two replicas starting at once on one ${backend.name} store create exactly one admin key, shown by one of them`, { timeout: 90_000 }, async (t) => {
      const prepared = await backend.prepare(t, dir);
      if (!prepared) return;
      const config = gatewayConfig(prepared.storage);
      const replicas = await Promise.all([startGateway({ config }), startGateway({ config })]);
      try {
        const created = await Promise.all(replicas.map(decided));
        assert.deepEqual(created.filter(Boolean).length, 1, `created: ${JSON.stringify(created)}`);
        const keys = await storedKeys(prepared.storage);
        assert.deepEqual(keys.map((k) => [k.principal, k.attributes, k.expiresAt, k.revokedAt]), [["admin", { roles: ["admin"] }, undefined, undefined]]);
        const shown = replicas.map((g) => [...new Set(g.stderr().match(KEY) ?? [])]);
        assert.deepEqual(shown.map((s) => s.length).sort(), [0, 1]);
        const key = shown.flat()[0]!;
        // Either replica accepts it: they share the store.
        assert.deepEqual(await Promise.all(replicas.map((g) => principalOf(g, key))), ["admin", "admin"]);
        for (const g of replicas) assert.deepEqual(linesContaining(g.stdout(), key), []);
      } finally {
        await Promise.all(replicas.map((g) => g.close()));
        await prepared.cleanup();
      }
    });
  }

  test("a restart after every key was revoked or expired creates no new admin key", { timeout: 90_000 }, async () => {
    const storage: StorageConfig = { type: "sqlite", db_path: join(dir, `revoked-${++serial}`, "tollgate.db") };
    const config = gatewayConfig(storage);
    const first = await startGateway({ config });
    let key: string;
    try {
      assert.equal(await decided(first), true);
      key = (first.stderr().match(KEY) ?? [])[0]!;
      assert.equal(await first.stop(), 0);
    } finally {
      await first.close();
    }
    const store = await openRecordStore(storage);
    try {
      const [admin] = await store.listApiKeys();
      await store.revokeApiKey(admin!.id, Date.now());
    } finally {
      await store.close();
    }
    const second = await startGateway({ config });
    try {
      assert.equal(await decided(second), false);
      assert.equal(second.stderr().match(KEY), null);
      assert.equal(await principalOf(second, key), 401);
      assert.deepEqual((await storedKeys(storage)).map((k) => k.revokedAt !== undefined), [true]);
    } finally {
      await second.close();
    }
  });

  test("--admin-key-file holds the key and a newline, mode 0600, and the key appears in no output; a replica that did not create it writes nothing", { timeout: 90_000 }, async () => {
    const storage: StorageConfig = { type: "sqlite", db_path: join(dir, `file-${++serial}`, "tollgate.db") };
    const config = gatewayConfig(storage);
    const keyFile = join(dir, `file-${serial}`, "secrets", "admin-key");
    const first = await startGateway({ config, args: ["--admin-key-file", keyFile] });
    const otherFile = join(dir, `file-${serial}`, "other-admin-key");
    let second: GatewayProcess | undefined;
    try {
      assert.equal(await decided(first), true);
      const text = readFileSync(keyFile, "utf8");
      assert.match(text, /^tg_[A-Za-z0-9_-]{43}\n$/);
      assert.equal(statSync(keyFile).mode & 0o777, 0o600);
      const key = text.trim();
      assert.deepEqual(linesContaining(first.stdout() + first.stderr(), key), []);
      assert.match(first.stderr(), new RegExp(`wrote it to ${keyFile.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")} \\(mode 0600\\)`));
      assert.equal(await principalOf(first, key), "admin");

      second = await startGateway({ config, args: ["--admin-key-file", otherFile] });
      assert.equal(await decided(second), false);
      assert.equal(existsSync(otherFile), false);
    } finally {
      await first.close();
      await second?.close();
    }
  });

  test("an existing --admin-key-file is never overwritten: serve exits 1 saying so, and the key it would have held is revoked", { timeout: 90_000 }, async () => {
    const folder = join(dir, `exists-${++serial}`);
    const storage: StorageConfig = { type: "sqlite", db_path: join(folder, "tollgate.db") };
    const configFile = join(dir, `exists-${serial}.yaml`);
    writeFileSync(configFile, JSON.stringify(gatewayConfig(storage)));
    const keyFile = join(dir, `exists-${serial}-key`);
    writeFileSync(keyFile, "an earlier key\n", { mode: 0o600 });
    const run = spawnSync(process.execPath, [distFile("cli/main.js"), "serve", "--config", configFile, "--port", "0", "--admin-key-file", keyFile], {
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(run.status, 1, run.stderr);
    assert.equal(readFileSync(keyFile, "utf8"), "an earlier key\n");
    const reason = run.stderr.split("\n").filter((l) => l.startsWith("tollgate: "));
    assert.equal(reason.length, 1, run.stderr);
    assert.match(reason[0]!, /--admin-key-file .*: cannot write the first admin key \(EEXIST; an existing file is never overwritten\); the key was revoked/);
    assert.equal(run.stderr.match(KEY), null);
    assert.deepEqual((await storedKeys(storage)).map((k) => [k.principal, k.revokedAt !== undefined]), [["admin", true]]);
  });
});
