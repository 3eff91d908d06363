import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { REPO, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// docs/admin.md's shell examples, run in order as one bash session against a
// real gateway (its first admin key in admin.key, as the doc says): every
// example in the doc must run. `curl -f` fails the session on any 4xx/5xx
// that the doc does not expect.

describe("docs/admin.md", { timeout: 60_000 }, () => {
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;
  before(async () => {
    upstream = await startUpstreamProcess();
    gateway = await startGateway({
      config: { server: { auth: { provider_config: { type: "api_key" } } }, upstream: { url: upstream.url }, storage: { type: "sqlite", db_path: "./tollgate.db" } },
      args: ["--admin-key-file", "admin.key"],
    });
  });
  after(async () => {
    await gateway?.close();
    await upstream?.close();
  });

  test("every shell example runs, in order, with curl and jq", () => {
    const doc = readFileSync(`${REPO}/docs/admin.md`, "utf8");
    const blocks = [...doc.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
    assert.ok(blocks.length >= 5);
    const script = `set -euo pipefail\n${blocks.join("\n")}`;
    const run = spawnSync("bash", ["-c", script], { cwd: gateway.dir, env: { ...process.env, GW: gateway.url }, encoding: "utf8", timeout: 30_000 });
    assert.equal(run.status, 0, `${run.stderr}\n${run.stdout}`);
    assert.match(run.stdout, /"invalid_parameter"/);
    assert.match(run.stdout, /"param": "expires_in"/);
    assert.match(run.stdout, /"\/admin\/v1\/keys"/);
  });
});
