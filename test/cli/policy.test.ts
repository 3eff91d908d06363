import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { after, test } from "node:test";

// `tollgate policy check`, run as a user runs it.

const repoRoot = resolve(import.meta.dirname, "../..");
const mainTs = join(repoRoot, "src/cli/main.ts");
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
const dir = mkdtempSync(join(tmpdir(), "tollgate-cli-policy-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function tollgate(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ["--import", tsxLoader, mainTs, ...args], { cwd: dir, timeout: 60_000 }, (err, stdout, stderr) => {
      done({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

const config = join(dir, "tollgate.yaml");
writeFileSync(
  config,
  `server:
  auth:
    provider_config: {type: custom, endpoint: "http://127.0.0.1:9/validate"}
    access_policy:
      - forbid: {actions: [create, read, delete], resource: "vector_store::*"}
        unless: user with admin in roles
        description: vector stores are for admins
      - permit: {actions: [read]}
        when: user in owners teams
        description: teammates read
`,
);
const empty = join(dir, "empty.yaml");
writeFileSync(empty, `server:\n  auth:\n    provider_config: {type: custom, endpoint: "http://127.0.0.1:9/validate"}\n`);

test("a denied action prints DENIED with the deciding rule and exits 3", async () => {
  const r = await tollgate(["policy", "check", "--config", config, "--principal", "bob", "--attr", "roles=user", "--action", "read", "--resource", "vector_store::vs1"]);
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stdout, "DENIED by access_policy[0] (vector stores are for admins)\n");
});

test("an allowed action prints ALLOWED with the rule and exits 0", async () => {
  const r = await tollgate([
    "policy", "check", "--config", config, "--principal", "carol", "--attr", "teams=ml", "--action", "read",
    "--resource", "file::file-1", "--owner", "alice", "--owner-attr", "teams=ml,web",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "ALLOWED by access_policy[1] (teammates read)\n");
});

test("no matching rule says so", async () => {
  const r = await tollgate(["policy", "check", "--config", config, "--principal", "bob", "--action", "delete", "--resource", "file::f"]);
  assert.equal(r.code, 3);
  assert.match(r.stdout, /^DENIED: no rule matched/);
});

test("an empty policy is the default policy, named as such", async () => {
  const r = await tollgate(["policy", "check", "--config", empty, "--principal", "alice", "--action", "delete", "--resource", "file::f", "--owner", "alice"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^ALLOWED by the default policy, rule 1 \(default: the user is the owner\)/);
});

test("a bad action or resource is an error (exit 1)", async () => {
  const bad = await tollgate(["policy", "check", "--config", config, "--principal", "x", "--action", "write", "--resource", "file::f"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--action must be one of create, read, update, delete/);
  const res = await tollgate(["policy", "check", "--config", config, "--principal", "x", "--action", "read", "--resource", "file"]);
  assert.equal(res.code, 1);
  assert.match(res.stderr, /--resource must be type::id/);
});

test("an invalid rule in the config is refused with its position", async () => {
  const broken = join(dir, "broken.yaml");
  writeFileSync(broken, `server:\n  auth:\n    provider_config: {type: custom, endpoint: "http://127.0.0.1:9/v"}\n    access_policy:\n      - permit: {actions: [read]}\n      - permit: {actions: [read]}\n        when: user is admin\n`);
  const r = await tollgate(["policy", "check", "--config", broken, "--principal", "x", "--action", "read", "--resource", "file::f"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /server\.auth\.access_policy\[1\]\.when: unrecognised condition "user is admin"/);
});
