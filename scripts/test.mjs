#!/usr/bin/env node
// Runs every test file under test/ with Node's own test runner, TypeScript
// loaded by tsx. Usage: node scripts/test.mjs [file-or-folder ...]
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function collect(path, out) {
  if (statSync(path).isDirectory()) {
    for (const entry of readdirSync(path).sort()) collect(join(path, entry), out);
  } else if (/\.test\.ts$/.test(path)) {
    out.push(path);
  }
  return out;
}

const roots = process.argv.slice(2);
const files = (roots.length ? roots : ["test"]).flatMap((r) => collect(r, []));
if (files.length === 0) {
  console.error("no test files found");
  process.exit(1);
}
console.error(`node ${process.version}: ${files.length} test files`);
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=2", "--test-timeout=120000", ...files],
  { stdio: "inherit", env: { ...process.env, TOLLGATE_TEST: "1" } },
);
process.exit(result.status ?? 1);
