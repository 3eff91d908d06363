import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

/**
 * The package's subpaths, imported by name as a user would: the package
 * refers to itself through package.json "exports", so a broken export map
 * (a missing entry, a wrong dist path) fails here. Runs against dist/, which
 * `npm test` builds first.
 */

const root = new URL("../../", import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("package.json", root), "utf8")) as {
  exports: Record<string, { types: string; default: string } | string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta: Record<string, { optional?: boolean }>;
};

const SUBPATHS: Record<string, readonly string[]> = {
  "tollgate/node": ["createTollgate", "toPipelineRequest", "sendError"],
  "tollgate/express": ["tollgate"],
  "tollgate/fastify": ["tollgatePlugin"],
  "tollgate/hono": ["tollgate", "toPipelineRequest"],
};

describe("the package's adapter subpaths", () => {
  for (const [specifier, names] of Object.entries(SUBPATHS)) {
    test(`${specifier} resolves into dist/adapters and exports ${names.join(", ")}`, async () => {
      const entry = pkg.exports[`./${specifier.slice("tollgate/".length)}`];
      assert.ok(entry && typeof entry === "object", `no "exports" entry for ${specifier}`);
      assert.ok(existsSync(new URL(entry.types, root)), `${entry.types} missing: was the package built?`);
      assert.equal(fileURLToPath(import.meta.resolve(specifier)), fileURLToPath(new URL(entry.default, root)));
      const mod = (await import(specifier)) as Record<string, unknown>;
      for (const name of names) assert.equal(typeof mod[name], "function", `${specifier} does not export ${name}`);
    });
  }

  test("the frameworks are optional peer dependencies", () => {
    for (const name of ["express", "fastify", "hono"]) {
      assert.ok(pkg.peerDependencies[name], `${name} is not a peer dependency`);
      assert.equal(pkg.peerDependenciesMeta[name]?.optional, true, `${name} is not optional`);
    }
  });

  test("no adapter loads a framework at run time (tollgate/hono not @hono/node-server): their imports are types only", () => {
    for (const name of ["express", "fastify", "hono"]) {
      const source = readFileSync(new URL(`dist/adapters/${name}.js`, root), "utf8");
      const specifiers = [...source.matchAll(/^\s*(?:import|export)\b[^;]*?from\s+["']([^"']+)["']|\bimport\(\s*["']([^"']+)["']/gm)].map((m) => m[1] ?? m[2]!);
      assert.ok(specifiers.length > 0);
      assert.deepEqual(specifiers.filter((s) => !s.startsWith(".")), [], `dist/adapters/${name}.js imports a package`);
    }
  });
});
