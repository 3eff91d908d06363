import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncOptions } from "node:child_process";
import type { TestContext } from "node:test";
import { REPO } from "../support/gateway.js";

/**
 * Docker for the deploy tests: the daemon's presence, the compose command of
 * this machine, the base images (scripts/local-images.sh) and every command
 * bounded in time. Whatever a test starts carries LABEL, so that
 * scripts/ci-docker.sh can remove what an interrupted run left behind.
 */
export const LABEL = "org.tollgate.test";

/** One line of a daemon's or CLI's complaint, for a skip reason. */
function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

/** Undefined when a Docker daemon answers, else why not. */
export function dockerUnavailable(): string | undefined {
  const r = spawnSync("docker", ["info", "--format", "{{.ServerVersion}}"], { encoding: "utf8", timeout: 20_000 });
  if (r.error) return `docker is not installed: ${oneLine(r.error.message)}`;
  if (r.status !== 0) return `docker is installed but no daemon answers: ${oneLine(r.stderr || r.stdout)}`;
  return undefined;
}

/**
 * The compose command here: the plugin (`docker compose`) where installed,
 * else Debian's standalone `docker-compose`; undefined when neither is.
 */
export function composeCommand(): string[] | undefined {
  for (const command of [["docker", "compose"], ["docker-compose"]]) {
    if (spawnSync(command[0]!, [...command.slice(1), "version"], { stdio: "ignore", timeout: 20_000 }).status === 0) return command;
  }
  return undefined;
}

/** The skip reason of CI's test runs after the one that tested the image (.ci/run sets TOLLGATE_TEST_DOCKER=skip). */
export const TESTED_ELSEWHERE = "TOLLGATE_TEST_DOCKER=skip: the image and the compose stack are tested once per CI run, by scripts/ci-docker.sh";
const NOT_ASKED = "TOLLGATE_TEST_DOCKER is not 1: building and running the image and the compose stack takes minutes (scripts/ci-docker.sh runs them)";

/**
 * True when the test can go on. The image tests run when asked for
 * (TOLLGATE_TEST_DOCKER=1, as scripts/ci-docker.sh does: they take longer
 * than the runner's usual 2 minutes a file) and a daemon answers. Otherwise
 * the test skips saying why — but under CI=true a missing daemon or compose,
 * or a run that neither asked for them nor says they ran elsewhere, fails
 * instead, so CI can never pass without them.
 */
export function requireDocker(t: TestContext, { compose = false } = {}): boolean {
  const asked = process.env.TOLLGATE_TEST_DOCKER;
  if (asked === "skip") {
    t.skip(TESTED_ELSEWHERE);
    return false;
  }
  const reason =
    asked !== "1"
      ? NOT_ASKED
      : (dockerUnavailable() ?? (compose && !composeCommand() ? "docker compose is not installed (neither the plugin nor docker-compose)" : undefined));
  if (!reason) return true;
  if (process.env.CI === "true") assert.fail(`${reason}; under CI=true this fails the run (scripts/ci-docker.sh starts a daemon and runs these tests)`);
  console.error(`skipped: ${reason}`);
  t.skip(reason);
  return false;
}

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end, within `timeoutMs`. */
export function run(command: string[], { timeoutMs = 120_000, ...options }: SpawnSyncOptions & { timeoutMs?: number } = {}): Run {
  const r = spawnSync(command[0]!, command.slice(1), { encoding: "utf8", maxBuffer: 64 * 1024 * 1024, ...options, timeout: timeoutMs });
  return { status: r.status, stdout: String(r.stdout ?? "").trim(), stderr: String(r.stderr ?? "") + (r.error ? `\n${r.error.message}` : "") };
}

/** `docker <args>`, which must succeed; its stdout, trimmed. */
export function docker(args: string[], options: SpawnSyncOptions & { timeoutMs?: number } = {}): string {
  const r = run(["docker", ...args], options);
  assert.equal(r.status, 0, `docker ${args.join(" ")} exited ${r.status}\n${r.stderr}`);
  return r.stdout;
}

/** `docker <args>` without blocking the event loop (a stream is read meanwhile). */
export function dockerAsync(args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn("docker", args, { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("close", (status) => resolve({ status, stdout: stdout.trim(), stderr }));
  });
}

/**
 * The Redis and PostgreSQL images deploy/compose.yaml is to use here: the
 * official ones, or the stand-ins scripts/local-images.sh makes from Debian
 * where no registry answers (made once; later runs find them at once).
 */
export function baseImages(): Record<"TOLLGATE_REDIS_IMAGE" | "TOLLGATE_POSTGRES_IMAGE", string> {
  const r = run([`${REPO}/scripts/local-images.sh`], { timeoutMs: 900_000 });
  assert.equal(r.status, 0, `scripts/local-images.sh exited ${r.status}\n${r.stderr}`);
  const exported = Object.fromEntries([...r.stdout.matchAll(/(TOLLGATE_\w+_IMAGE)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
  assert.ok(exported.TOLLGATE_REDIS_IMAGE && exported.TOLLGATE_POSTGRES_IMAGE, `scripts/local-images.sh printed ${r.stdout}`);
  return exported as Record<"TOLLGATE_REDIS_IMAGE" | "TOLLGATE_POSTGRES_IMAGE", string>;
}

/** Polls `probe` every 500 ms until it gives a value; fails after `timeoutMs` naming `what`. */
export async function poll<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
