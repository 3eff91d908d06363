import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { CATALOG_PRESETS, PRESET_NAMES } from "../../src/gateway/catalog.js";
import { REPO } from "../support/gateway.js";

// docs/routes.md is what an operator reads to know what passes: every route
// of every preset must be in its preset's section, and nothing more.
test("docs/routes.md lists every route of every preset, in its preset's section", () => {
  const doc = readFileSync(`${REPO}/docs/routes.md`, "utf8");
  for (const name of PRESET_NAMES) {
    const start = doc.indexOf(`\n## ${name}\n`);
    assert.ok(start >= 0, `docs/routes.md has a "## ${name}" section`);
    const end = doc.indexOf("\n## ", start + 1);
    const section = doc.slice(start, end === -1 ? undefined : end);
    const listed = [...section.matchAll(/^\| ([A-Z]+) \| `([^`]+)` \|/gm)].map((m) => `${m[1]} ${m[2]}`);
    const declared = CATALOG_PRESETS[name].map((e) => `${e.method} ${e.path}`);
    assert.deepEqual(listed, declared, name);
  }
});
