#!/usr/bin/env node
// `npm run bench:soak`: does the gateway's memory stay flat under many
// distinct clients? The verified-token cache, the quota counters and every
// other per-client structure must be bounded.
//
// The demo upstream, a loopback identity provider (Ed25519 JWKS), and one
// gateway (oauth2_token JWT + the 100-rule access policy + a SQLite quota);
// the load generator (bench/soak-load.mjs, autocannon) runs in its own
// process and sends POST /v1/chat/completions with tokens of 100,000
// distinct `sub`s, round-robin, so every client comes back long after the
// token cache has forgotten it. The gateway's RSS is sampled every 10 s and
// printed; the run fails (exit 1) when RSS grows more than 20 % after the
// first minute: the last minute's level (median of its samples) against the
// first minute's (median of its second half), so that one collection's
// swing does not decide.
//
// Knobs: SOAK_SECONDS (default 300), SOAK_CLIENTS (default 100000),
// SOAK_CONNECTIONS (default 20), SOAK_MAX_GROWTH (default 0.2).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BENCH_MODEL, accessPolicyYaml, freePort, startIdentityProvider, treeRss, waitFor } from "./support.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SECONDS = Number(process.env.SOAK_SECONDS ?? 300);
const CLIENTS = Number(process.env.SOAK_CLIENTS ?? 100_000);
const CONNECTIONS = Number(process.env.SOAK_CONNECTIONS ?? 20);
const MAX_GROWTH = Number(process.env.SOAK_MAX_GROWTH ?? 0.2);
const SAMPLE_MS = 10_000;
const BASELINE_S = Math.min(60, Math.floor(SECONDS / 2));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const children = [];
let stopping = false;
function startNode(args, stdio = "ignore") {
  const child = spawn(process.execPath, args, { stdio: ["ignore", stdio, "inherit"] });
  child.on("exit", (code, signal) => {
    if (!stopping && code !== 0) console.error(`soak: ${args.join(" ")} exited (${code ?? signal})`);
  });
  children.push(child);
  return child;
}

const work = mkdtempSync(join(tmpdir(), "tollgate-soak-"));
const idp = await startIdentityProvider({ alg: "EdDSA" });
let failed = false;
/** Set when the RSS series was long enough to compare the first minute with the last. */
let judged = false;
try {
  const upstreamPort = await freePort();
  startNode([join(root, "dist/demo/upstream.js"), "--port", String(upstreamPort)]);
  const upstream = `http://127.0.0.1:${upstreamPort}`;
  await waitFor(`${upstream}/v1/models`);

  const port = await freePort();
  const config = join(work, "tollgate.yaml");
  writeFileSync(
    config,
    [
      "server:",
      `  port: ${port}`,
      "  auth:",
      `    provider_config: {type: oauth2_token, issuer: "${idp.issuer}", jwks: {uri: "${idp.jwksUri}"}, algorithms: [EdDSA]}`,
      "    access_policy:",
      ...accessPolicyYaml(),
      "  quota:",
      `    kvstore: {type: sqlite, db_path: "${join(work, "quota.db")}"}`,
      "    authenticated_max_requests: 1000000000",
      "    period: day",
      "    limits: [{requests: 1000000000, period: minute}]",
      `upstream: {url: "${upstream}"}`,
      `storage: {type: sqlite, db_path: "${join(work, "records.db")}"}`,
      "logging: {level: warn}",
    ].join("\n"),
  );
  const gateway = startNode([join(root, "dist/cli/main.js"), "serve", "--config", config]);
  const url = `http://127.0.0.1:${port}`;
  await waitFor(`${url}/health`);

  console.error(`soak: signing ${CLIENTS} tokens (distinct sub each)`);
  const tokens = [];
  for (let i = 0; i < CLIENTS; i++) tokens.push(await idp.sign({ sub: `soak-user-${i}`, groups: ["ml"] }));
  const tokenFile = join(work, "tokens.txt");
  writeFileSync(tokenFile, tokens.join("\n"));
  tokens.length = 0;

  console.error(`soak: ${SECONDS} s, ${CONNECTIONS} connections, RSS every ${SAMPLE_MS / 1000} s`);
  const body = JSON.stringify({ model: BENCH_MODEL, messages: [{ role: "user", content: "Say hello" }] });
  const loader = startNode([join(root, "bench/soak-load.mjs"), `${url}/v1/chat/completions`, tokenFile, String(SECONDS), String(CONNECTIONS), body], "pipe");
  let loadOut = "";
  loader.stdout.on("data", (d) => (loadOut += d));
  const loadDone = new Promise((resolve) => loader.on("exit", resolve));

  const series = [];
  const started = Date.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const t = Math.round((Date.now() - started) / 1000);
      const rss = treeRss(gateway.pid);
      series.push({ t, rss_mb: rss === undefined ? null : Math.round((rss / 1024 / 1024) * 10) / 10 });
      console.log(`t=${String(t).padStart(4)} s  rss=${series.at(-1).rss_mb} MB`);
      if (t >= SECONDS) {
        clearInterval(timer);
        resolve();
      }
    }, SAMPLE_MS);
  });
  await loadDone;
  const load = JSON.parse(loadOut.trim().split("\n").pop() || "{}");
  console.log(`load: ${load.requests ?? "?"} requests (${load.rps ?? "?"} req/s), ${load.non2xx ?? "?"} non-2xx, ${load.errors ?? "?"} errors`);

  // Levels, not single samples: RSS moves by ±10 % with each collection, so
  // the first minute's level (median of its second half) is compared with
  // the last minute's (median of its samples). Growth there is a leak.
  const rss = (from, to) => series.filter((x) => x.t > from && x.t <= to && x.rss_mb !== null).map((x) => x.rss_mb);
  const first = rss(BASELINE_S / 2, BASELINE_S);
  const last = rss(Math.max(BASELINE_S, SECONDS - 60), Infinity);
  if (first.length === 0 || last.length === 0 || SECONDS <= BASELINE_S) {
    console.log("soak: not enough samples to judge (RSS is read from /proc: Linux only)");
  } else {
    judged = true;
    const before = median(first);
    const after = median(last);
    const growth = after / before - 1;
    const peak = Math.max(...series.map((x) => x.rss_mb ?? 0));
    console.log(
      `RSS level in the first minute: ${before} MB; in the last: ${after} MB (${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)} %, limit +${MAX_GROWTH * 100} %); peak ${peak} MB`,
    );
    if (growth > MAX_GROWTH) failed = true;
  }
  if (!(load.requests > 0) || load.non2xx > 0 || load.errors > 0) {
    console.log("soak: the load generator saw failures");
    failed = true;
  }
  // A run too short to compare two levels proves nothing about leaks: it is not a pass.
  console.log(failed ? "soak: FAILED" : judged ? "soak: passed" : "soak: not enough samples (no verdict)");
} finally {
  stopping = true;
  for (const c of children) c.kill("SIGTERM");
  idp.close();
  await new Promise((r) => setTimeout(r, 200));
  rmSync(work, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : judged ? 0 : 2;
