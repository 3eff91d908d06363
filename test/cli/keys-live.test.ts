import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { distFile, linesContaining, startGateway } from "../support/gateway.js";
import { storageBackends } from "../support/record-stores.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Keys managed with the CLI while a gateway process runs on the same store:
// a new key works at once, a revoked one is refused within a second.

function tollgateCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [distFile("cli/main.js"), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

describe("keys managed by the CLI while the gateway runs", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let dir: string;
  before(async () => {
    upstream = await startUpstreamProcess();
    dir = mkdtempSync(join(tmpdir(), "tollgate-keys-live-"));
  });
  after(async () => {
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A gateway on `api_key` auth over `storage`, passing the principal upstream (the tests read it back). */
  const apiKeyConfig = (storage: unknown) => ({
    server: { auth: { provider_config: { type: "api_key" } } },
    upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
    storage,
  });

  for (const backend of storageBackends) {
    test(`${backend.name}: a key created by the CLI is accepted, and refused within a second of its revocation`, { timeout: 60_000 }, async (t) => {
      const prepared = await backend.prepare(t, dir);
      if (!prepared) return;
      const config = apiKeyConfig(prepared.storage);
      const configFile = join(dir, `${backend.name}.yaml`);
      writeFileSync(configFile, JSON.stringify(config));
      const gateway = await startGateway({ config });
      try {
        const created = await tollgateCli(["keys", "create", "--config", configFile, "--principal", "carol", "--attr", "roles=user"]);
        assert.equal(created.code, 0, created.stderr);
        const key = created.stdout.trim();
        const call = (headers: Record<string, string> = {}) => fetch(`${gateway.url}/api/version`, { headers: { ...headers, authorization: `Bearer ${key}`, "x-demo-echo": "1" } });

        const ok = await call();
        assert.equal(ok.status, 200);
        const echoed = (await ok.json()) as { headers: Record<string, string> };
        assert.equal(echoed.headers["x-tollgate-principal"], "carol");
        assert.equal(echoed.headers.authorization, undefined);

        // Warm the gateway's lookup cache right before revoking: the bound must hold even then.
        assert.equal((await call()).status, 200);
        const revoked = await tollgateCli(["keys", "revoke", "--config", configFile, key]);
        assert.equal(revoked.code, 0, revoked.stderr);
        await sleep(1000);
        const { tag, headers } = newTag();
        const refused = await call(headers);
        assert.equal(refused.status, 401);
        assert.deepEqual(await refused.json(), {
          error: { message: "Invalid API key", type: "authentication_error", code: "invalid_token", param: null },
        });
        await assertNotForwarded(upstream, tag);
        assert.equal(await gateway.stop(), 0);
        assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), key), []);
      } finally {
        await gateway.close();
        await prepared.cleanup();
      }
    });

    test(`${backend.name}: after keys rotate --grace the old secret works until the grace ends, then is refused; the new one works at once`, { timeout: 60_000 }, async (t) => {
      const prepared = await backend.prepare(t, dir);
      if (!prepared) return;
      const config = apiKeyConfig(prepared.storage);
      const configFile = join(dir, `${backend.name}-rotate.yaml`);
      writeFileSync(configFile, JSON.stringify(config));
      const gateway = await startGateway({ config });
      /** GET /v1/models with `key`, tagged so that the upstream's record shows whether it was forwarded. */
      const call = async (key: string) => {
        const { tag, headers } = newTag();
        const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, authorization: `Bearer ${key}` } });
        const body = (await res.json()) as { error?: { message: string; code: string } };
        return { status: res.status, body, tag };
      };
      /** Who the upstream was told made a call that passed. */
      const principalOf = async (sent: { tag: string }) => (await assertForwarded(upstream, sent.tag)).map((r) => r.headers["x-tollgate-principal"]);
      try {
        const created = await tollgateCli(["keys", "create", "--config", configFile, "--principal", "rita"]);
        assert.equal(created.code, 0, created.stderr);
        const oldKey = created.stdout.trim();
        assert.deepEqual(await principalOf(await call(oldKey)), ["rita"]);
        const listed = JSON.parse((await tollgateCli(["keys", "list", "--config", configFile, "--json"])).stdout) as { id: string; principal: string }[];
        const id = listed.find((k) => k.principal === "rita")!.id;

        const rotated = await tollgateCli(["keys", "rotate", "--config", configFile, id, "--grace", "3s"]);
        assert.equal(rotated.code, 0, rotated.stderr);
        assert.match(rotated.stdout, /^tg_[A-Za-z0-9_-]{43}\n$/);
        const newKey = rotated.stdout.trim();
        assert.notEqual(newKey, oldKey);
        assert.match(rotated.stderr, new RegExp(`rotated API key ${id} \\(principal rita\\)`));
        const rotatedAt = Date.now();

        const fresh = await call(newKey);
        assert.equal(fresh.status, 200);
        assert.deepEqual(await principalOf(fresh), ["rita"]);
        assert.deepEqual(await principalOf(await call(oldKey)), ["rita"]);
        // The grace (3 s) plus the gateway's lookup cache (under a second).
        await sleep(Math.max(0, rotatedAt + 4000 - Date.now()));
        const expired = await call(oldKey);
        assert.deepEqual(
          { status: expired.status, body: expired.body },
          { status: 401, body: { error: { message: "API key has expired", type: "authentication_error", code: "invalid_token", param: null } } },
        );
        await assertNotForwarded(upstream, expired.tag);
        assert.deepEqual(await principalOf(await call(newKey)), ["rita"]);

        // Without --grace the secret it replaces stops within a second.
        const again = await tollgateCli(["keys", "rotate", "--config", configFile, id]);
        assert.equal(again.code, 0, again.stderr);
        await sleep(1000);
        const replaced = await call(newKey);
        assert.equal(replaced.status, 401);
        await assertNotForwarded(upstream, replaced.tag);
        assert.deepEqual(await principalOf(await call(again.stdout.trim())), ["rita"]);
        assert.equal(await gateway.stop(), 0);
        for (const secret of [oldKey, newKey, again.stdout.trim()]) assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), secret), []);
      } finally {
        await gateway.close();
        await prepared.cleanup();
      }
    });
  }
  test("a key created with --name and --limit is held to its own limit by the running gateway, beside the principal's quota", { timeout: 60_000 }, async () => {
    const storage = { type: "sqlite", db_path: join(dir, "limited-keys.db") };
    const config = {
      ...apiKeyConfig(storage),
      server: { auth: { provider_config: { type: "api_key" } }, quota: { kvstore: { type: "sqlite", db_path: join(dir, "limited-quota.db") }, authenticated_max_requests: 1000, period: "day" } },
    };
    const configFile = join(dir, "limited.yaml");
    writeFileSync(configFile, JSON.stringify(config));
    const gateway = await startGateway({ config });
    try {
      const created = await tollgateCli(["keys", "create", "--config", configFile, "--principal", "dave", "--name", "ci-bot", "--limit", "requests=2/minute"]);
      assert.equal(created.code, 0, created.stderr);
      assert.match(created.stderr, /name: +ci-bot/);
      assert.match(created.stderr, /limits: +requests=2\/minute/);
      const key = created.stdout.trim();
      const listed = await tollgateCli(["keys", "list", "--config", configFile, "--json"]);
      // The gateway made the first admin key of this store when it started: the one asked for is the other.
      const entry = (JSON.parse(listed.stdout) as { principal: string; name: string; limits: unknown[] }[]).find((k) => k.principal === "dave");
      assert.deepEqual({ name: entry!.name, limits: entry!.limits }, { name: "ci-bot", limits: [{ requests: 2, period: "minute" }] });

      const call = (headers: Record<string, string> = {}) => fetch(`${gateway.url}/api/version`, { headers: { ...headers, authorization: `Bearer ${key}`, "x-demo-echo": "1" } });
      const passing = newTag();
      const first = await call(passing.headers);
      assert.equal(first.status, 200, await first.text());
      assert.equal((await call()).status, 200);
      await assertForwarded(upstream, passing.tag);
      const { tag, headers } = newTag();
      const refused = await call(headers);
      assert.equal(refused.status, 429);
      assert.ok(Number(refused.headers.get("retry-after")) > 0);
      await assertNotForwarded(upstream, tag);
    } finally {
      await gateway.close();
    }
  });
});
