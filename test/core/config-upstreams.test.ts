import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { checkConfigFiles } from "../../src/core/config/files.js";
import { configJsonSchema, loadConfig, parseConfig, validateConfig } from "../../src/core/config/load.js";
import { DEFAULT_UPSTREAM, upstreamsOf } from "../../src/core/config/schema.js";
import { ConfigError } from "../../src/core/errors.js";

/** The issues a config text is refused with (fails when it is accepted). */
function issues(text: string): readonly string[] {
  try {
    parseConfig(text, "test.yaml", {});
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.issues;
  }
  assert.fail("expected the config to be refused");
}

const yaml = (...lines: string[]) => lines.join("\n") + "\n";

describe("upstreams and model_aliases in the config", () => {
  test("upstreams: each entry named, with its models and the settings upstream: has; model_aliases kept", () => {
    const config = parseConfig(
      yaml(
        "upstreams:",
        "  - {name: vllm-big, url: http://10.0.0.5:8000, models: [llama-3.1-70b, \"llama-guard-*\"]}",
        "  - {name: ollama, url: http://127.0.0.1:11434, models: [\"*\"], api_key: sk-1, response_timeout_ms: 5000, verify_tls: false}",
        "model_aliases: {gpt-4o: llama-3.1-70b}",
      ),
      "t",
    );
    assert.equal(config.upstream, undefined);
    assert.deepEqual(
      upstreamsOf(config).map((u) => [u.name, u.url, u.models, u.api_key, u.response_timeout_ms, u.connect_timeout_ms, u.verify_tls]),
      [
        ["vllm-big", "http://10.0.0.5:8000", ["llama-3.1-70b", "llama-guard-*"], undefined, 600_000, 10_000, true],
        ["ollama", "http://127.0.0.1:11434", ["*"], "sk-1", 5000, 10_000, false],
      ],
    );
    assert.deepEqual(config.model_aliases, { "gpt-4o": "llama-3.1-70b" });
  });

  test("a single upstream: is one upstream named default serving every model; neither form: the default address", () => {
    const one = parseConfig(yaml("upstream: {url: http://h:1, api_key: k}"), "t");
    assert.deepEqual(upstreamsOf(one).map((u) => [u.name, u.url, u.models, u.api_key]), [["default", "http://h:1", ["*"], "k"]]);
    const none = parseConfig(yaml("logging: {level: info}"), "t");
    assert.deepEqual(upstreamsOf(none).map((u) => [u.name, u.url, u.models]), [["default", DEFAULT_UPSTREAM, ["*"]]]);
    assert.deepEqual(none.model_aliases, {});
  });

  test("a validated config passes validation again unchanged, in either form", () => {
    for (const text of [yaml("upstream: {url: http://h:1}"), yaml("upstreams: [{name: a, url: http://h:1, models: [m]}]", "model_aliases: {x: m}")]) {
      const config = parseConfig(text, "t");
      assert.deepEqual(validateConfig(structuredClone(config)), config);
    }
  });

  test("upstream: and upstreams: together are refused, naming upstreams", () => {
    assert.deepEqual(issues(yaml("upstream: {url: http://h:1}", "upstreams: [{name: a, url: http://h:2, models: [m]}]")), [
      "upstreams: use either upstream (one server) or upstreams (several), not both (line 2)",
    ]);
  });

  test("a name is required and unique; models are required; each refusal names its path", () => {
    assert.deepEqual(
      issues(
        yaml(
          "upstreams:",
          "  - {name: a, url: http://h:1, models: [m]}",
          "  - {url: http://h:2, models: [m]}",
          "  - {name: a, url: http://h:3, models: [n]}",
          "  - {name: d, url: http://h:4}",
        ),
      ).map((issue) => issue.replace(/ \(line \d+\)$/, "")),
      ["upstreams[1].name: required", "upstreams[3].models: required"],
    );
    assert.deepEqual(
      issues(yaml("upstreams:", "  - {name: a, url: http://h:1, models: [m]}", "  - {name: b, url: http://h:2, models: [m]}", "  - {name: a, url: http://h:3, models: [n]}")),
      ['upstreams[2].name: duplicate name "a": names must be unique (line 4)'],
    );
  });

  test("an upstream's url, unknown keys and empty lists are refused with their path", () => {
    assert.deepEqual(issues(yaml("upstreams:", "  - {name: a, url: http://h:1/v1, models: [m], colour: red}")).map((i) => i.replace(/ \(line \d+\)$/, "").slice(0, 48)), [
      "upstreams[0].url: must not end in /v1: clients a",
      "upstreams[0].colour: unknown key",
    ]);
    assert.deepEqual(issues(yaml("upstreams: []")), ["upstreams: Too small: expected array to have >=1 items (line 1)"]);
    assert.deepEqual(issues(yaml("upstreams: [{name: a, url: http://h:1, models: []}]")), ["upstreams[0].models: Too small: expected array to have >=1 items (line 1)"]);
  });

  test("an alias whose target is itself an alias is refused: aliases are not chained", () => {
    assert.deepEqual(issues(yaml("model_aliases: {a: b, b: c}")), ['model_aliases.a: the target "b" is itself an alias: aliases are not chained (line 1)']);
  });

  test("an upstream's tls_cafile resolves against the config file's folder; one that cannot be read is named by its path", () => {
    const dir = mkdtempSync(join(tmpdir(), "tollgate-upstream-ca-"));
    try {
      const file = join(dir, "tollgate.yaml");
      writeFileSync(file, yaml("upstreams:", "  - {name: a, url: https://h:1, models: [m], tls_cafile: ./ca.pem}", "  - {name: b, url: https://h:2, models: [\"*\"]}"));
      const config = loadConfig(file, {});
      assert.equal(upstreamsOf(config)[0]!.tls_cafile, join(dir, "ca.pem"));
      assert.throws(() => checkConfigFiles(config, file), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.deepEqual(err.issues, [`upstreams[0].tls_cafile: cannot read ${join(dir, "ca.pem")}: ENOENT`]);
        return true;
      });
      writeFileSync(join(dir, "ca.pem"), "-----BEGIN CERTIFICATE-----\n");
      checkConfigFiles(config, file);
      writeFileSync(file, yaml("upstream: {url: https://h:1, tls_cafile: ./other.pem}"));
      assert.equal(loadConfig(file, {}).upstream!.tls_cafile, join(dir, "other.pem"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("config schema describes upstreams and model_aliases", () => {
    const schema = configJsonSchema() as { properties: Record<string, { items?: { properties: Record<string, unknown>; required: string[] } }> };
    const item = schema.properties.upstreams!.items!;
    assert.deepEqual(item.required.sort(), ["models", "name", "url"]);
    assert.ok("api_key" in item.properties && "tls_cafile" in item.properties && "verify_tls" in item.properties);
    assert.ok("model_aliases" in schema.properties);
  });
});

test("docs/upstreams.md's YAML examples are valid configs", () => {
  const doc = readFileSync(new URL("../../docs/upstreams.md", import.meta.url), "utf8");
  const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const names = blocks.map((block) => upstreamsOf(parseConfig(block, "docs/upstreams.md example", {})).map((u) => u.name));
  assert.deepEqual(names, [
    ["vllm-big", "vllm-big-2", "ollama"],
    ["vllm", "lab"],
  ]);
});
