#!/usr/bin/env node
// Runs every test file under test/ with Node's own test runner, TypeScript
// loaded by tsx. Usage: node scripts/test.mjs [file-or-folder ...]
//
// Prints how many tests were skipped and why. A skip is expected only for
// the reasons in EXPECTED_SKIPS (things that cannot exist on this runtime or
// machine by design); under CI=true any other skip fails the run, so CI can
// never go green by skipping (a missing redis-server, openssl, ...).
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

/** Skip reasons that are by design, each with why. Anything else is unexpected. */
const EXPECTED_SKIPS = [
  // SQLite: node:sqlite exists from Node 22.5; better-sqlite3 is an optional dependency built for Node 20 only.
  [/^node:sqlite is not available in (Node )?v20\./, "node:sqlite needs Node 22.5+"],
  [/^better-sqlite3 is not available in (Node )?v2[2-9]\./, "better-sqlite3 is optional and built for Node 20 only"],
  [/^both drivers load in Node v/, "the missing-driver message can only be checked where a driver is missing"],
  // Docker: CI tests the image and the compose stack once, in scripts/ci-docker.sh (under CI=true a
  // missing daemon fails there); its other test runs skip them saying so. No other Docker skip is expected.
  [/^TOLLGATE_TEST_DOCKER=skip: /, "the image and the stack are tested once per CI run, by scripts/ci-docker.sh"],
  // Outside CI only (under CI=true test/deploy/docker.ts fails instead of skipping): they take minutes.
  [/^TOLLGATE_TEST_DOCKER is not 1: /, "the image tests run when asked for (scripts/ci-docker.sh)"],
];

function collect(path, out) {
  if (statSync(path).isDirectory()) {
    for (const entry of readdirSync(path).sort()) collect(join(path, entry), out);
  } else if (/\.test\.ts$/.test(path)) {
    out.push(path);
  }
  return out;
}

// Each file's time limit. TOLLGATE_TEST_TIMEOUT_MS raises it for the image tests (scripts/ci-docker.sh).
const TIMEOUT_MS = Number(process.env.TOLLGATE_TEST_TIMEOUT_MS ?? 120_000);
const roots = process.argv.slice(2);
const files = (roots.length ? roots : ["test"]).flatMap((r) => collect(r, []));
if (files.length === 0) {
  console.error("no test files found");
  process.exit(1);
}
console.error(`node ${process.version}: ${files.length} test files`);
const scratch = mkdtempSync(join(tmpdir(), "tollgate-test-"));
const skipsFile = join(scratch, "skips.jsonl");
const reporter = fileURLToPath(new URL("./skip-reporter.mjs", import.meta.url));
const args = [
  "--import", "tsx", "--test", "--test-concurrency=2", `--test-timeout=${TIMEOUT_MS}`,
  "--test-reporter=spec", "--test-reporter-destination=stdout",
  `--test-reporter=${reporter}`, `--test-reporter-destination=${skipsFile}`,
  ...files,
];
// Several whole-suite runs at once on one machine (worktrees, several
// runtimes) starve each other's timing-sensitive tests: they take turns,
// through flock(1) on one lock file, where flock is installed.
const LOCK_FROM_FILES = 10;
const lock = files.length >= LOCK_FROM_FILES && spawnSync("flock", ["--version"]).status === 0 ? join(tmpdir(), "tollgate-test-suite.lock") : undefined;
if (lock) console.error(`taking turns with other test runs on this machine (flock ${lock})`);
const result = spawnSync(lock ? "flock" : process.execPath, lock ? [lock, process.execPath, ...args] : args, {
  stdio: "inherit",
  env: { ...process.env, TOLLGATE_TEST: "1" },
});

let skips = [];
try {
  skips = readFileSync(skipsFile, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));
} catch {
  // No file: the runner died before reporting; its status says so below.
}
rmSync(scratch, { recursive: true, force: true });

const unexpected = skips.filter((s) => !EXPECTED_SKIPS.some(([pattern]) => pattern.test(s.reason)));
console.error(`\n${skips.length} skipped (${skips.length - unexpected.length} by design, ${unexpected.length} unexpected)`);
for (const s of skips) {
  const why = EXPECTED_SKIPS.find(([pattern]) => pattern.test(s.reason))?.[1];
  console.error(`  ${why ? "by design" : "UNEXPECTED"}: ${s.file ? relative(process.cwd(), s.file) : "?"}: ${s.name}: ${s.reason || "(no reason given)"}`);
}
if (unexpected.length > 0 && process.env.CI === "true") {
  console.error(`\nCI=true: ${unexpected.length} unexpected skip(s) fail the run; install what they need or make them run.`);
  process.exit(1);
}
process.exit(result.status ?? 1);
