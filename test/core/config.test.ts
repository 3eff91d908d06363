import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { substituteEnv } from "../../src/core/config/env.js";
import { configJsonSchema, defaultConfig, formatPath, loadConfig, parseConfig, validateConfig } from "../../src/core/config/load.js";
import { DEFAULT_PUBLIC_PATHS, DEFAULT_UPSTREAM } from "../../src/core/config/schema.js";
import { ConfigError } from "../../src/core/errors.js";

/** The issues a config text is refused with (fails when it is accepted). */
function issues(text: string, env: Record<string, string | undefined> = {}): readonly string[] {
  try {
    parseConfig(text, "test.yaml", env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.issues;
  }
  assert.fail("expected the config to be refused");
}

const yaml = (...lines: string[]) => lines.join("\n") + "\n";

describe("env substitution", () => {
  test("${env.NAME} is replaced by the variable's value", () => {
    const config = parseConfig(yaml("upstream:", "  url: ${env.UP}"), "t", { UP: "http://10.0.0.1:8000" });
    assert.equal(config.upstream!.url, "http://10.0.0.1:8000");
  });

  test("a reference inside a longer string is replaced in place", () => {
    const config = parseConfig(yaml("upstream:", "  url: http://${env.HOST}:${env.PORT}/base"), "t", { HOST: "h", PORT: "1" });
    assert.equal(config.upstream!.url, "http://h:1/base");
  });

  test("${env.NAME:=default} uses the default when the variable is unset", () => {
    const config = parseConfig(yaml("upstream:", "  url: ${env.UP:=http://fallback:1}"), "t", {});
    assert.equal(config.upstream!.url, "http://fallback:1");
  });

  test("${env.NAME:=default} uses the default when the variable is empty", () => {
    const config = parseConfig(yaml("upstream:", "  url: ${env.UP:=http://fallback:1}"), "t", { UP: "" });
    assert.equal(config.upstream!.url, "http://fallback:1");
  });

  test("${env.NAME:=default} uses the variable when it is set", () => {
    const config = parseConfig(yaml("upstream:", "  url: ${env.UP:=http://fallback:1}"), "t", { UP: "http://set:2" });
    assert.equal(config.upstream!.url, "http://set:2");
  });

  test("${env.NAME:+value} is the value when the variable is set and non-empty", () => {
    const config = parseConfig(yaml("upstream:", "  api_key: ${env.K:+from-plus}"), "t", { K: "anything" });
    assert.equal(config.upstream!.api_key, "from-plus");
  });

  test("${env.NAME:+value} is nothing when the variable is unset, so the key is absent", () => {
    const config = parseConfig(yaml("upstream:", "  api_key: ${env.K:+from-plus}"), "t", {});
    assert.equal(config.upstream!.api_key, undefined);
  });

  test("a value that is exactly one reference takes the type it expands to", () => {
    const config = parseConfig(
      yaml("server:", "  port: ${env.PORT}", "  auth:", "    provider_config:", "      type: custom", "      endpoint: http://a/v", "      verify_tls: ${env.VERIFY}", "      timeout_ms: ${env.T:=2500}"),
      "t",
      { PORT: "9000", VERIFY: "false" },
    );
    assert.equal(config.server.port, 9000);
    const provider = config.server.auth?.provider_config;
    assert.equal(provider?.type, "custom");
    assert.equal(provider.type === "custom" && provider.verify_tls, false);
    assert.equal(provider.type === "custom" && provider.timeout_ms, 2500);
  });

  test("a reference that expands to nothing lets the schema's default apply", () => {
    const config = parseConfig(yaml("server:", "  port: ${env.PORT}", "  host: ${env.HOST:=}"), "t", { PORT: "" });
    assert.equal(config.server.port, 8321);
    assert.equal(config.server.host, "127.0.0.1");
  });

  test("list items that expand to nothing are dropped", () => {
    const config = parseConfig(yaml("server:", "  public_paths: [/health, '${env.EXTRA:=}']"), "t", {});
    assert.deepEqual(config.server.public_paths, ["/health"]);
  });

  test("an unset variable without a default is an error naming the path and the line", () => {
    assert.deepEqual(issues(yaml("server:", "  port: 1", "upstream:", "  url: ${env.UPSTREAM_URL}")), [
      "upstream.url: environment variable UPSTREAM_URL is not set (use ${env.UPSTREAM_URL:=default} for a default) (line 4)",
    ]);
  });

  test("a substituted value is never re-read as YAML: string fields keep the exact text", () => {
    for (const text of ["0123", "0x1F", "true", "null", "~", "'quoted'", "a: b", "#x", "1e3", ".inf", "[a, b]", "  padded  ", "-"]) {
      const config = parseConfig(yaml("upstream:", "  api_key: ${env.SECRET}"), "t", { SECRET: text });
      assert.equal(config.upstream!.api_key, text, `\${env.SECRET} holding ${JSON.stringify(text)}`);
    }
    // A default is part of the file's text, so only what YAML reads as plain text there.
    for (const text of ["0123", "0x1F", "true", "null", "~", "1e3", ".inf"]) {
      const withDefault = parseConfig(yaml("upstream:", `  api_key: \${env.UNSET:=${text}}`), "t", {});
      assert.equal(withDefault.upstream!.api_key, text, `default ${JSON.stringify(text)}`);
    }
  });

  test("number and boolean fields accept the text of a substituted value, and only decimal numbers", () => {
    const config = parseConfig(yaml("server:", "  port: ${env.PORT:=8321}", "  workers: ${env.WORKERS}", "metrics:", "  enabled: ${env.METRICS}"), "t", { WORKERS: "3", METRICS: "False" });
    assert.equal(config.server.port, 8321);
    assert.equal(config.server.workers, 3);
    assert.equal(config.metrics.enabled, false);
    assert.equal(parseConfig(yaml("server:", "  workers: ${env.WORKERS}"), "t", { WORKERS: "auto" }).server.workers, "auto");
    assert.deepEqual(issues(yaml("server:", "  port: ${env.PORT}"), { PORT: "0x1F" }), ["server.port: expected number, received string (line 2)"]);
  });

  test("a number written as a quoted string in the file is still refused: only substituted text is accepted", () => {
    assert.deepEqual(issues(yaml("server:", "  port: '8321'")), ["server.port: expected number, received string (line 2)"]);
  });

  test("list positions stay right when an earlier item expands to nothing", () => {
    const config = parseConfig(yaml("server:", "  public_paths: ['${env.NONE:=}', '/h${env.X}']"), "t", { X: "ealth" });
    assert.deepEqual(config.server.public_paths, ["/health"]);
  });

  test("substituteEnv names list positions in its error path", () => {
    assert.throws(() => substituteEnv({ a: ["x", "${env.NOPE}"] }, {}), (err: { path?: unknown }) => {
      assert.equal(formatPath(err.path as (string | number)[]), "a[1]");
      return true;
    });
  });

  test("text that only looks like a reference is left alone", () => {
    assert.deepEqual(substituteEnv({ a: "${NAME}", b: "$env.X", c: "${env.}" }, {}), { a: "${NAME}", b: "$env.X", c: "${env.}" });
  });
});

describe("unknown keys and type errors", () => {
  test("an unknown top-level key is an error naming it", () => {
    assert.deepEqual(issues(yaml("serverr:", "  port: 1")), ["serverr: unknown key (line 1)"]);
  });

  test("an unknown key in a section names its full path", () => {
    assert.deepEqual(issues(yaml("upstream:", "  url: http://a:1", "  urll: http://b:2")), ["upstream.urll: unknown key (line 3)"]);
  });

  test("an unknown key deep in the provider config names its full path, along with the missing key it was meant to be", () => {
    const found = issues(yaml("server:", "  auth:", "    provider_config:", "      type: custom", "      endpiont: http://a/v"));
    assert.ok(found.includes("server.auth.provider_config.endpiont: unknown key (line 5)"), found.join("\n"));
    assert.ok(found.some((i) => i.startsWith("server.auth.provider_config.endpoint: required")), found.join("\n"));
  });

  test("a string where a number belongs is a type error naming the path", () => {
    assert.deepEqual(issues(yaml("server:", "  port: eighty")), ["server.port: expected number, received string (line 2)"]);
  });

  test("an upstream.url ending in /v1 is refused with the reason; another base path is kept", () => {
    for (const url of ["http://vllm:8000/v1", "http://vllm:8000/v1/", "https://api.example.com/V1"]) {
      const [issue, ...rest] = issues(yaml("upstream:", `  url: ${url}`));
      assert.match(issue!, /^upstream\.url: must not end in \/v1: clients already send \/v1\/\.\.\. paths/, url);
      assert.deepEqual(rest, []);
    }
    assert.equal(parseConfig(yaml("upstream:", "  url: http://h:1/openai"), "t").upstream!.url, "http://h:1/openai");
    assert.equal(parseConfig(yaml("upstream:", "  url: http://h:1/v1beta"), "t").upstream!.url, "http://h:1/v1beta");
  });

  test("server.resources.unlisted is deny by default, allow on request, nothing else", () => {
    const defaults = parseConfig(yaml("server:", "  port: 1"), "t").server.resources;
    assert.equal(defaults.unlisted, "deny");
    assert.deepEqual(defaults.presets, ["openai", "llama_stack", "vllm", "ollama", "tgi"]);
    assert.equal(parseConfig(yaml("server:", "  resources:", "    unlisted: allow"), "t").server.resources.unlisted, "allow");
    assert.match(issues(yaml("server:", "  resources:", "    unlisted: maybe"))[0]!, /^server\.resources\.unlisted: /);
  });

  test("an out-of-range port is refused", () => {
    const [issue] = issues(yaml("server:", "  port: 70000"));
    assert.match(issue!, /^server\.port: .*65535/);
  });

  test("a non-http upstream URL is refused", () => {
    assert.deepEqual(issues(yaml("upstream:", "  url: ftp://x")), ["upstream.url: expected an http:// or https:// URL (line 2)"]);
  });

  test("an unknown provider type lists the known ones", () => {
    const [issue] = issues(yaml("server:", "  auth:", "    provider_config: {type: ldap}"));
    assert.match(issue!, /^server\.auth\.provider_config\.type: expected one of .*custom.*upstream_header.*api_key/);
  });

  test("an unknown storage type lists the known ones", () => {
    const [issue] = issues(yaml("storage: {type: mysql}"));
    assert.match(issue!, /^storage\.type: expected one of .*sqlite.*postgres/);
  });

  test("an auth section without a provider is an error", () => {
    assert.deepEqual(issues(yaml("server:", "  auth: {}")), ["server.auth.provider_config: required (line 2)"]);
  });

  test("a file that is not a mapping is refused", () => {
    assert.deepEqual(issues("- a\n- b\n"), ["(top level): expected a mapping of sections (server, upstream, storage, logging)"]);
    assert.deepEqual(issues("just text\n"), ["(top level): expected a mapping of sections (server, upstream, storage, logging)"]);
  });

  test("every issue is reported at once, not only the first", () => {
    assert.equal(issues(yaml("server:", "  port: x", "  host: 1", "upstream:", "  nope: 1")).length, 3);
  });
});

describe("YAML errors", () => {
  test("invalid YAML is an error with its line", () => {
    const found = issues(yaml("server:", "  port: [8321", "upstream: {}"));
    assert.ok(found.length > 0);
    assert.match(found[0]!, /^invalid YAML: .*\(line \d+, column \d+\)$/);
  });

  test("a duplicate key is an error with its line, not a silent override", () => {
    const found = issues(yaml("server:", "  port: 1", "  port: 2"));
    assert.match(found[0]!, /^invalid YAML: .*unique.*\(line 3, column 3\)$/);
  });

  test("an empty file is the defaults", () => {
    const config = parseConfig("", "t", {});
    assert.equal(config.server.port, 8321);
    assert.equal(config.server.auth, undefined);
  });
});

describe("the Llama Stack server section", () => {
  const current = yaml("server:", "  auth:", "    provider_config:", "      type: custom", "      endpoint: https://auth.example.com/validate");
  const older = yaml("server:", "  auth:", "    provider_type: custom", "    config:", "      endpoint: https://auth.example.com/validate");

  test("auth.provider_config {type: custom, endpoint} is the custom provider with its defaults", () => {
    const config = parseConfig(current, "t", {});
    assert.deepEqual(config.server.auth?.provider_config, {
      type: "custom",
      endpoint: "https://auth.example.com/validate",
      timeout_ms: 10_000,
      verify_tls: true,
    });
  });

  test("the older auth {provider_type, config} form yields the same provider_config", () => {
    assert.deepEqual(parseConfig(older, "t", {}).server.auth, parseConfig(current, "t", {}).server.auth);
  });

  test("the older form's provider_type is case-insensitive, as in Llama Stack", () => {
    const config = parseConfig(older.replace("provider_type: custom", "provider_type: Custom"), "t", {});
    assert.equal(config.server.auth?.provider_config?.type, "custom");
  });

  test("in the older form an unknown key is reported under config", () => {
    const found = issues(yaml("server:", "  auth:", "    provider_type: custom", "    config:", "      endpiont: http://a/v"));
    assert.ok(found.includes("server.auth.config.endpiont: unknown key (line 5)"), found.join("\n"));
  });

  test("in the older form an unknown provider type is reported at provider_type", () => {
    const [issue] = issues(yaml("server:", "  auth:", "    provider_type: ldap", "    config: {}"));
    assert.match(issue!, /^server\.auth\.provider_type: expected one of /);
  });

  test("both forms at once are refused", () => {
    const found = issues(yaml("server:", "  auth:", "    provider_type: custom", "    provider_config: {type: custom, endpoint: http://a/v}"));
    assert.match(found[0]!, /^server\.auth\.provider_type: use either provider_config or provider_type \+ config, not both/);
  });

  test("tls_certfile and tls_keyfile become server.tls", () => {
    const config = parseConfig(yaml("server:", "  tls_certfile: ./cert.pem", "  tls_keyfile: ./key.pem"), "t", {});
    assert.deepEqual(config.server.tls, { cert_file: "./cert.pem", key_file: "./key.pem" });
  });

  test("tls_certfile without tls_keyfile is refused", () => {
    assert.deepEqual(issues(yaml("server:", "  tls_certfile: ./cert.pem")), ["server.tls_certfile: tls_certfile and tls_keyfile go together (line 2)"]);
  });

  test("tls and tls_certfile together are refused", () => {
    const found = issues(yaml("server:", "  tls: {cert_file: a, key_file: b}", "  tls_certfile: c", "  tls_keyfile: d"));
    assert.match(found[0]!, /^server\.tls: use either tls or tls_certfile\/tls_keyfile, not both/);
  });

  test("a cors section is accepted (and ignored)", () => {
    const config = parseConfig(yaml("server:", "  cors:", "    allow_origins: ['*']"), "t", {});
    assert.equal("cors" in config.server, false);
  });

  test("public_paths are stored canonical", () => {
    const config = parseConfig(yaml("server:", "  public_paths: [/v1//health/, /x/./ready, '/%6Detrics']"), "t", {});
    assert.deepEqual(config.server.public_paths, ["/v1/health", "/x/ready", "/metrics"]);
  });

  test("a public path that is not absolute is refused", () => {
    assert.deepEqual(issues(yaml("server:", "  public_paths: [health]")), ["server.public_paths[0]: expected an absolute path such as /health (line 2)"]);
  });

  test("without public_paths the defaults are Llama Stack's health and version routes", () => {
    assert.deepEqual(parseConfig("", "t", {}).server.public_paths, [...DEFAULT_PUBLIC_PATHS]);
  });
});

describe("defaultConfig", () => {
  test("without TOLLGATE_UPSTREAM it forwards to Ollama's default address with Tollgate's own API keys", () => {
    const config = defaultConfig({});
    assert.equal(config.upstream!.url, DEFAULT_UPSTREAM);
    assert.deepEqual(config.server.auth?.provider_config, { type: "api_key", cache_ttl_ms: 500 });
    assert.deepEqual(config.storage, { type: "sqlite", db_path: "./data/tollgate.db" });
  });

  test("TOLLGATE_UPSTREAM sets the upstream", () => {
    assert.equal(defaultConfig({ TOLLGATE_UPSTREAM: "http://10.0.0.5:8000" }).upstream!.url, "http://10.0.0.5:8000");
  });
});

describe("loadConfig", () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-config-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("reads and validates a file, naming the file in errors", () => {
    const path = join(dir, "bad.yaml");
    writeFileSync(path, yaml("server:", "  port: x"));
    assert.throws(() => loadConfig(path, {}), (err: unknown) => err instanceof ConfigError && err.message.startsWith(`${path}: invalid configuration`));
  });

  test("a file that cannot be read is a ConfigError saying why", () => {
    const path = join(dir, "missing.yaml");
    assert.throws(() => loadConfig(path, {}), (err: unknown) => err instanceof ConfigError && err.issues[0] === "cannot read the file: ENOENT");
  });

  test("an empty or comments-only file is an error naming the file, not a gateway without authentication", () => {
    for (const [name, text] of [["empty.yaml", ""], ["blank.yaml", "\n  \n"], ["comments.yaml", "# server:\n#   auth: ...\n"]] as const) {
      const path = join(dir, name);
      writeFileSync(path, text);
      assert.throws(
        () => loadConfig(path, {}),
        (err: unknown) => err instanceof ConfigError && err.message.startsWith(`${path}: invalid configuration`) && /the file is empty/.test(err.issues[0]!),
        name,
      );
    }
  });

  test("relative file paths resolve against the config file's folder, whatever the working directory", () => {
    const folder = join(dir, "etc", "tollgate");
    mkdirSync(folder, { recursive: true });
    const path = join(folder, "tollgate.yaml");
    writeFileSync(
      path,
      yaml(
        "server:",
        "  tls: {cert_file: tls/cert.pem, key_file: ./tls/key.pem}",
        "  auth:",
        "    provider_config: {type: custom, endpoint: 'https://auth.example/v', tls_cafile: ../ca.pem}",
        "  quota:",
        "    kvstore: {type: sqlite, db_path: ./data/quota.db}",
        "storage: {type: sqlite, db_path: data/tollgate.db}",
      ),
    );
    const config = loadConfig(path, {});
    assert.notEqual(process.cwd(), folder);
    assert.equal(config.storage.type === "sqlite" && config.storage.db_path, join(folder, "data/tollgate.db"));
    assert.equal(config.server.quota?.kvstore.type === "sqlite" && config.server.quota.kvstore.db_path, join(folder, "data/quota.db"));
    assert.deepEqual(config.server.tls, { cert_file: join(folder, "tls/cert.pem"), key_file: join(folder, "tls/key.pem") });
    const provider = config.server.auth?.provider_config;
    assert.equal(provider?.type === "custom" && provider.tls_cafile, join(dir, "etc", "ca.pem"));
  });

  test("absolute paths and :memory: are kept; parseConfig without a folder keeps paths as written", () => {
    const path = join(dir, "absolute.yaml");
    writeFileSync(path, yaml("storage: {type: sqlite, db_path: /var/lib/tollgate/t.db}", "server:", "  quota: {kvstore: {type: sqlite, db_path: ':memory:'}}"));
    const config = loadConfig(path, {});
    assert.equal(config.storage.type === "sqlite" && config.storage.db_path, "/var/lib/tollgate/t.db");
    assert.equal(config.server.quota?.kvstore.type === "sqlite" && config.server.quota.kvstore.db_path, ":memory:");
    const text = parseConfig(yaml("storage: {type: sqlite, db_path: ./x.db}"), "t", {});
    assert.equal(text.storage.type === "sqlite" && text.storage.db_path, "./x.db");
  });

  test("the loaded config is frozen", () => {
    const path = join(dir, "good.yaml");
    writeFileSync(path, yaml("server:", "  port: 1234"));
    const config = loadConfig(path, {});
    assert.ok(Object.isFrozen(config));
    assert.ok(Object.isFrozen(config.server.public_paths));
  });
});

describe("validateConfig", () => {
  test("fills in the defaults of a config written in code", () => {
    const config = validateConfig({ server: { auth: { provider_config: { type: "custom", endpoint: "http://127.0.0.1:9/v" } } } });
    assert.equal(config.server.port, 8321);
    assert.deepEqual(config.server.auth?.provider_config, { type: "custom", endpoint: "http://127.0.0.1:9/v", timeout_ms: 10_000, verify_tls: true });
  });

  test("a validated config passes through unchanged", () => {
    const once = parseConfig(yaml("server:", "  tls_certfile: c", "  tls_keyfile: k", "  auth:", "    provider_type: custom", "    config: {endpoint: http://a/v}"), "t", {});
    assert.deepEqual(validateConfig(once), once);
    assert.deepEqual(validateConfig(defaultConfig({})), defaultConfig({}));
  });

  test("names the path of each problem", () => {
    assert.throws(
      () => validateConfig({ server: { prot: 1 } }, "createTollgate"),
      (err: unknown) => err instanceof ConfigError && err.issues[0] === "server.prot: unknown key" && err.message.startsWith("createTollgate:"),
    );
  });
});

describe("configJsonSchema", () => {
  const schema = configJsonSchema();

  function objectsIn(node: unknown, out: Record<string, unknown>[] = []): Record<string, unknown>[] {
    if (Array.isArray(node)) node.forEach((n) => objectsIn(n, out));
    else if (node && typeof node === "object") {
      const o = node as Record<string, unknown>;
      if (o.type === "object" && o.properties) out.push(o);
      Object.values(o).forEach((v) => objectsIn(v, out));
    }
    return out;
  }

  test("is a JSON Schema object with the server, upstream and storage sections", () => {
    assert.equal(typeof schema.$schema, "string");
    assert.equal(schema.type, "object");
    const properties = schema.properties as Record<string, unknown>;
    for (const section of ["server", "upstream", "storage"]) assert.ok(section in properties, `no ${section}`);
  });

  test("refuses unknown keys on every object, as the loader does", () => {
    const objects = objectsIn(schema);
    assert.ok(objects.length > 5);
    for (const o of objects) assert.equal(o.additionalProperties, false, `open object: ${Object.keys(o.properties as object).join(",")}`);
  });

  test("is plain JSON", () => {
    assert.deepEqual(JSON.parse(JSON.stringify(schema)), schema);
  });
});
