import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { distFile, linesContaining, startGateway } from "../support/gateway.js";
import { scopedPostgres } from "../support/postgres.js";
import { requireService } from "../support/services.js";
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

type Storage = { storage: Record<string, unknown>; cleanup(): Promise<void> };

const backends: { name: string; prepare(t: TestContext, dir: string): Promise<Storage | undefined> }[] = [
  {
    name: "sqlite",
    async prepare(_t, dir) {
      return { storage: { type: "sqlite", db_path: join(dir, "keys.db") }, cleanup: async () => {} };
    },
  },
  {
    name: "postgres",
    async prepare(t) {
      const url = await requireService(t, "postgres");
      if (!url) return undefined;
      const pg = await scopedPostgres(url, "live");
      return { storage: { type: "postgres", url: pg.url }, cleanup: pg.drop };
    },
  },
];

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

  for (const backend of backends) {
    test(`${backend.name}: a key created by the CLI is accepted, and refused within a second of its revocation`, { timeout: 60_000 }, async (t) => {
      const prepared = await backend.prepare(t, dir);
      if (!prepared) return;
      const config = {
        server: { auth: { provider_config: { type: "api_key" } } },
        upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
        storage: prepared.storage,
      };
      const configFile = join(dir, `${backend.name}.yaml`);
      writeFileSync(configFile, JSON.stringify(config));
      const gateway = await startGateway({ config });
      try {
        const created = await tollgateCli(["keys", "create", "--config", configFile, "--principal", "carol", "--attr", "roles=user"]);
        assert.equal(created.code, 0, created.stderr);
        const key = created.stdout.trim();
        const call = () => fetch(`${gateway.url}/echo/whoami`, { headers: { authorization: `Bearer ${key}` } });

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
        const refused = await call();
        assert.equal(refused.status, 401);
        assert.deepEqual(await refused.json(), {
          error: { message: "Invalid API key", type: "authentication_error", code: "invalid_token", param: null },
        });
        assert.equal(await gateway.stop(), 0);
        assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), key), []);
      } finally {
        await gateway.close();
        await prepared.cleanup();
      }
    });
  }
});
