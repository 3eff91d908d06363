// Shared by bench/run.mjs, its scenario modules, bench/soak.mjs and the
// micro-benchmarks: ports, readiness, Redis reachability, the identity
// provider the JWT scenarios verify against, the 100-rule access policy, RSS
// and CPU time from /proc, the open-loop generator, percentiles and tables.
import { execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { SignJWT } from "jose";

export const REDIS_URL = process.env.TOLLGATE_BENCH_REDIS_URL ?? process.env.TOLLGATE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";

/** A TCP port nothing listens on right now (loopback). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** Resolves once `url` answers a 2xx; rejects after `ms`. */
export async function waitFor(url, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not become ready`);
}

/** Whether something accepts TCP connections at the URL's host and port (Redis default 6379). */
export function reachable(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || 6379), timeout: 1000 });
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => (socket.destroy(), resolve(false)));
  });
}

/**
 * A loopback identity provider: a JWKS (one RS256 key, or Ed25519 with
 * `alg: "EdDSA"`) and an introspection endpoint that calls every token
 * active. Each is asked once per cache period, so it costs the measurement
 * nothing. `sign(claims)` issues a token that verifies against the JWKS.
 */
export async function startIdentityProvider({ alg = "RS256" } = {}) {
  const { privateKey, publicKey } = alg === "EdDSA" ? generateKeyPairSync("ed25519") : generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "bench-1", alg, use: "sig" }] });
  const exp = Math.floor(Date.now() / 1000) + 24 * 3600;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (req.url === "/jwks") return res.writeHead(200, { "content-type": "application/json" }).end(jwks);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: "bench", exp }));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    audience: "llama-stack",
    sign: (claims) =>
      new SignJWT({ aud: "llama-stack", iss: issuer, ...claims }).setProtectedHeader({ alg, kid: "bench-1" }).setExpirationTime(exp).sign(privateKey),
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** The model every benchmark request names; the demo upstream serves it. */
export const BENCH_MODEL = "demo-small";

/**
 * The 100-rule access policy of scenarios 4–6, as data: 99 rules that do not
 * apply to the benchmark's user and model, then the one that decides (any
 * model may be read). Half of the 99 forbid every model to members of a team
 * the user is not in: their resource matches, so their condition is
 * evaluated on every request; the other half forbid another model, and are
 * passed over on the resource. Evaluated in order, first match decides: the
 * worst case, every rule is looked at.
 */
export const POLICY_RULES = [
  ...Array.from({ length: 99 }, (_, i) => ({ effect: "forbid", resource: i % 2 === 0 ? "model::*" : `model::blocked-${i}`, team: `t${i}` })),
  { effect: "permit", resource: "model::*" },
];

/** {@link POLICY_RULES} as `server.auth.access_policy` YAML lines (indented for it). */
export function accessPolicyYaml(indent = "      ") {
  return POLICY_RULES.map((r) =>
    r.team
      ? `${indent}- {${r.effect}: {actions: [read], resource: "${r.resource}"}, when: "user with ${r.team} in teams"}`
      : `${indent}- {${r.effect}: {actions: [read], resource: "${r.resource}"}}`,
  );
}

/** The pids of `pid`'s children (every thread's `children` list); [] when it is gone or /proc is not there. */
export function childPids(pid) {
  const out = [];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      try {
        out.push(...readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" ").filter(Boolean).map(Number));
      } catch {}
    }
  } catch {}
  return out;
}

/**
 * Resident set size of `pid` and its descendants (a supervisor and its
 * workers, nginx's master and worker), in bytes; undefined where /proc is
 * not there (not Linux) or the process is gone.
 */
export function treeRss(pid) {
  let total = 0;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (m) total += Number(m[1]) * 1024;
  } catch {
    return undefined;
  }
  for (const child of childPids(pid)) total += treeRss(child) ?? 0;
  return total;
}

let clockTicks;
/** Clock ticks per second, the unit of /proc/<pid>/stat's CPU times (100 on every mainstream Linux). */
function ticksPerSecond() {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { stdio: ["ignore", "pipe", "ignore"] }).toString().trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces): [0] is field 3, `state`. */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/**
 * CPU time (user + system, seconds) used so far by `pid` and its living
 * descendants; undefined where /proc is not there or the process is gone.
 * The difference of two readings is what a gateway, all its workers
 * included, spent between them.
 */
export function treeCpu(pid) {
  let ticks;
  try {
    const f = statFields(pid);
    ticks = Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
  } catch {
    return undefined;
  }
  let total = ticks / ticksPerSecond();
  for (const child of childPids(pid)) total += treeCpu(child) ?? 0;
  return total;
}

/**
 * CPU time (seconds) of this process's children that have exited and been
 * waited for (cutime + cstime of /proc/self/stat); the difference across one
 * load-generator run is what the load generator spent. Undefined without /proc.
 */
export function reapedChildrenCpu() {
  try {
    const f = statFields("self");
    return (Number(f[13]) + Number(f[14])) / ticksPerSecond(); // cutime, cstime (fields 16, 17)
  } catch {
    return undefined;
  }
}

/**
 * Resolves once `pid` has `count` children and its whole tree has stopped
 * using CPU (three 100 ms samples in a row without a tick): a supervisor's
 * workers have finished starting, which its first answer alone does not show
 * (the first worker to listen answers while the others are still loading).
 * Resolves after `ms` in any case, and at once where /proc is not there.
 */
export async function waitForSettledTree(pid, count, ms = 15_000) {
  const deadline = Date.now() + ms;
  let last;
  let quiet = 0;
  while (Date.now() < deadline) {
    const cpu = treeCpu(pid);
    if (cpu === undefined) return;
    if (childPids(pid).length >= count && cpu === last) {
      if (++quiet >= 3) return;
    } else quiet = 0;
    last = cpu;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Samples {@link treeRss} of `pid` every `everyMs` until `stop()`, which returns the largest seen (bytes) or undefined. */
export function sampleRss(pid, everyMs = 200) {
  let max;
  const take = () => {
    const rss = treeRss(pid);
    if (rss !== undefined) max = Math.max(max ?? 0, rss);
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return max;
    },
  };
}

/** Percentile `p` (0–100) of an ascending array, nearest rank; null for none. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** A Markdown table: `header` is a list of `[title, align]` ("l" or "r"), `rows` lists of cells (null shows "–"). */
export function markdownTable(header, rows) {
  const cell = (x) => (x === null || x === undefined ? "–" : String(x));
  return [
    `| ${header.map(([title]) => title).join(" | ")} |`,
    `| ${header.map(([, align]) => (align === "r" ? "---:" : "---")).join(" | ")} |`,
    ...rows.map((row) => `| ${row.map(cell).join(" | ")} |`),
  ];
}

/**
 * Runs bench/open-loop.mjs (the open-loop load generator) in its own process
 * with `args` (`--name value` pairs, repeated for arrays) and resolves with
 * the JSON it prints; rejects when it fails.
 */
export function runOpenLoop(mode, args) {
  const argv = [join(dirname(fileURLToPath(import.meta.url)), "open-loop.mjs"), mode];
  for (const [name, value] of Object.entries(args)) for (const v of [value].flat()) argv.push(`--${name}`, String(v));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`open-loop ${mode} exited ${code}`))));
  });
}

/** The soft limit on open files of this process (children inherit it); undefined without /proc. */
export function openFileLimit() {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? (m[1] === "unlimited" ? Infinity : Number(m[1])) : undefined;
  } catch {
    return undefined;
  }
}
