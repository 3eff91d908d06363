import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
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
  assert.deepEqual(Object.keys(schema.properties).sort(), ["logging", "metrics", "model_aliases", "pricing", "server", "storage", "tracing", "upstream", "upstreams", "usage"]);
  assert.deepEqual(Object.keys((schema.properties.pricing as { properties: object }).properties).sort(), ["currency", "models"]);
});

test("an unknown command fails with a one-line reason", () => {
  const r = tollgate("frobnicate");
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split("\n").length, 1);
});

test("config validate reads every file the config names, relative to the config's folder, and names the one it cannot read", () => {
  const folder = mkdtempSync(join(dir, "files-"));
  mkdirSync(join(folder, "tls"));
  writeFileSync(join(folder, "tls", "cert.pem"), "-----BEGIN CERTIFICATE-----\n");
  const text = [
    "server:",
    "  tls: {cert_file: tls/cert.pem, key_file: tls/key.pem}",
    "  auth:",
    "    provider_config: {type: custom, endpoint: 'https://auth.example/v', tls_cafile: ca.pem}",
    "",
  ].join("\n");
  const path = join(folder, "tollgate.yaml");
  writeFileSync(path, text);
  // From another working directory: the paths follow the file, not the shell.
  const r = spawnSync(process.execPath, [cli, "config", "validate", path], { encoding: "utf8", cwd: tmpdir() });
  assert.equal(r.status, 1);
  assert.equal(r.stdout, "");
  assert.equal(
    r.stderr,
    [
      `tollgate: ${path}: invalid configuration`,
      `  server.tls.key_file: cannot read ${join(folder, "tls", "key.pem")}: ENOENT`,
      `  server.auth.provider_config.tls_cafile: cannot read ${join(folder, "ca.pem")}: ENOENT`,
      "",
    ].join("\n"),
  );

  writeFileSync(join(folder, "tls", "key.pem"), "-----BEGIN PRIVATE KEY-----\n");
  writeFileSync(join(folder, "ca.pem"), "-----BEGIN CERTIFICATE-----\n");
  const valid = spawnSync(process.execPath, [cli, "config", "validate", path], { encoding: "utf8", cwd: tmpdir() });
  assert.equal(valid.status, 0, valid.stderr);
});

test("serve refuses a config whose files cannot be read with the same lines as config validate, before listening", () => {
  const folder = mkdtempSync(join(dir, "serve-files-"));
  mkdirSync(join(folder, "cert.pem"));
  const path = join(folder, "tollgate.yaml");
  writeFileSync(path, "server:\n  tls: {cert_file: cert.pem, key_file: /nonexistent/key.pem}\n");
  const validate = tollgate("config", "validate", path);
  const serve = spawnSync(process.execPath, [cli, "serve", "--config", path, "--port", "0"], { encoding: "utf8", timeout: 30_000 });
  assert.equal(serve.status, 1);
  assert.equal(validate.status, 1);
  assert.match(validate.stderr, new RegExp(`server\\.tls\\.cert_file: cannot read ${join(folder, "cert.pem")}: EISDIR`));
  assert.match(validate.stderr, /server\.tls\.key_file: cannot read \/nonexistent\/key\.pem: ENOENT/);
  assert.equal(serve.stderr, validate.stderr);
  assert.doesNotMatch(serve.stdout, /listening/);
});

test("config validate refuses an empty or comments-only file, naming it", () => {
  for (const [name, text] of [["empty.yaml", ""], ["comments.yaml", "# nothing here yet\n"]]) {
    const path = file(name!, text!);
    const r = tollgate("config", "validate", path);
    assert.equal(r.status, 1, name);
    assert.match(r.stderr, new RegExp(`^tollgate: ${path}: invalid configuration\\n  \\(top level\\): the file is empty`));
  }
});
