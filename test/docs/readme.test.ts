import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { configJsonSchema, parseConfig } from "../../src/core/config/load.js";

const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

type JsonSchema = {
  type?: string;
  properties?: Record<string, JsonSchema>;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
};

/** Every key the schema accepts, as dotted paths; union branches contribute their keys under the same path. */
function keyPaths(schema: JsonSchema, prefix: string, out: Set<string>): Set<string> {
  for (const branch of [...(schema.anyOf ?? []), ...(schema.oneOf ?? [])]) keyPaths(branch, prefix, out);
  for (const [key, sub] of Object.entries(schema.properties ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    out.add(path);
    keyPaths(sub, path, out);
  }
  return out;
}

test("every config key the schema accepts is documented in the README", () => {
  const missing = [...keyPaths(configJsonSchema() as JsonSchema, "", new Set())].filter((path) => {
    // Provider settings are documented per provider type by their own name.
    const name = path.startsWith("server.auth.provider_config.") ? path.split(".").at(-1)! : path;
    return !readme.includes(`\`${name}\``) && !readme.includes(`\`${name}.`) && !readme.includes(`${name}:`);
  });
  assert.deepEqual(missing, []);
});

test("the README's YAML examples are valid configs", () => {
  const blocks = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length >= 2);
  for (const block of blocks) {
    assert.doesNotThrow(() => parseConfig(block, "README example", { OPENAI_API_KEY: "sk-test", UPSTREAM_API_KEY: "x", KEYCLOAK_CLIENT_SECRET: "s" }), block);
  }
});

test("the README opens with the install-and-run and install-and-test commands", () => {
  const firstBlock = readme.match(/```sh\n([\s\S]*?)```/)![1]!;
  assert.match(firstBlock, /npm install && npx tollgate serve/);
  assert.match(firstBlock, /npm install && npm test/);
});
