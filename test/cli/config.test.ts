import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const cli = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "tollgate-config-cli-"));

function tollgate(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", env: { ...process.env, NO_COLOR: "1" } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

test("config validate exits 0 and says valid for a good file", () => {
  const path = file("good.yaml", "server:\n  auth:\n    provider_config: {type: custom, endpoint: http://127.0.0.1:9/validate}\n");
  const r = tollgate("config", "validate", path);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `${path}: valid\n`);
});

test("config validate accepts Llama Stack's older provider_type + config form", () => {
  const path = file("legacy.yaml", "server:\n  port: 8321\n  auth:\n    provider_type: custom\n    config:\n      endpoint: https://auth.example.com/validate\n");
  assert.equal(tollgate("config", "validate", path).status, 0);
});

test("config validate exits 1 naming the path of an unknown key and of a missing one", () => {
  const path = file("typo.yaml", "server:\n  auth:\n    provider_config:\n      type: custom\n      endpiont: http://x/validate\n");
  const r = tollgate("config", "validate", path);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /server\.auth\.provider_config\.endpiont: unknown key \(line 5\)/);
  assert.match(r.stderr, /server\.auth\.provider_config\.endpoint: required/);
});

test("config validate exits 1 on invalid YAML, with the line", () => {
  const path = file("broken.yaml", "server:\n  port: [8321\n");
  const r = tollgate("config", "validate", path);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /invalid YAML: .*\(line \d+/);
});

test("config validate exits 1 on a file that does not exist", () => {
  const r = tollgate("config", "validate", join(dir, "nope.yaml"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /nope\.yaml: invalid configuration\n {2}cannot read the file: ENOENT/);
});

test("config validate names an unset environment variable and where it is used", () => {
  const path = file("env.yaml", "upstream:\n  url: ${env.TOLLGATE_TEST_SURELY_UNSET}\n");
  const r = tollgate("config", "validate", path);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /upstream\.url: environment variable TOLLGATE_TEST_SURELY_UNSET is not set/);
});

test("config schema prints a JSON Schema that refuses unknown keys", () => {
  const r = tollgate("config", "schema");
  assert.equal(r.status, 0);
  const schema = JSON.parse(r.stdout) as { $schema: string; properties: Record<string, { additionalProperties?: boolean }>; additionalProperties: boolean };
  assert.match(schema.$schema, /json-schema\.org/);
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(Object.keys(schema.properties).sort(), ["logging", "metrics", "server", "storage", "upstream"]);
});

test("an unknown command fails with a one-line reason", () => {
  const r = tollgate("frobnicate");
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split("\n").length, 1);
});
