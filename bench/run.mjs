#!/usr/bin/env node
// `npm run bench`: Tollgate's cost per request, as ratios measured in one run.
//
// Processes, all on loopback: the demo upstream (a fixed small JSON answer),
// the gateway, and the load generator (autocannon's CLI) in a separate process
// so that it does not share an event loop with what it measures. Each scenario
// warms up, then runs for a fixed time; rounds alternate the scenarios so that
// drift (thermal, other load) affects all alike; each figure is the median of
// the rounds.
//
// Knobs: BENCH_DURATION (seconds per run, default 5), BENCH_ROUNDS (default 3),
// BENCH_CONNECTIONS (default 50), BENCH_WARMUP (seconds, default 2).
// Micro-benchmarks live in bench/micro/*.mjs (helpers start with `_`): each runs in its own process,
// prints a Markdown section, and keeps to a second or two when BENCH_QUICK=1.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startOAuth2Scenarios, writeOAuth2Config } from "./oauth2-gateways.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const DURATION = Number(process.env.BENCH_DURATION ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
const cli = join(root, "dist/cli/main.js");
const autocannon = join(root, "node_modules/autocannon/autocannon.js");

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function waitFor(url, ms = 15_000) {
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

function startProcess(args, env = {}) {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, ...env } });
  child.on("exit", (code, signal) => {
    if (!stopping) console.error(`bench: ${args.join(" ")} exited (${code ?? signal})`);
  });
  return child;
}

function load(url, headers) {
  const args = [autocannon, "-j", "-c", String(CONNECTIONS), "-d", String(DURATION)];
  for (const [k, v] of Object.entries(headers)) args.push("-H", `${k}=${v}`);
  args.push(url);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`autocannon exited ${code}`));
      const r = JSON.parse(out.trim().split("\n").pop());
      resolve({ rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors });
    });
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

let stopping = false;
const children = [];
const work = mkdtempSync(join(tmpdir(), "tollgate-bench-"));
let oauth2;
try {
  const upstreamPort = await freePort();
  children.push(startProcess([join(root, "dist/demo/upstream.js"), "--port", String(upstreamPort)]));
  const upstream = `http://127.0.0.1:${upstreamPort}`;
  await waitFor(`${upstream}/v1/models`);

  const gatewayPort = await freePort();
  const config = join(work, "tollgate.yaml");
  writeFileSync(
    config,
    [
      "server:",
      `  port: ${gatewayPort}`,
      "  auth:",
      "    provider_config: {type: api_key}",
      `upstream: {url: "${upstream}"}`,
      `storage: {type: sqlite, db_path: "${join(work, "tollgate.db")}"}`,
      "logging: {level: warn}",
    ].join("\n"),
  );
  const key = execFileSync(process.execPath, [cli, "keys", "create", "--config", config, "--principal", "bench"], {
    stdio: ["ignore", "pipe", "ignore"],
  })
    .toString()
    .split("\n")[0];
  children.push(startProcess([cli, "serve", "--config", config]));
  const gateway = `http://127.0.0.1:${gatewayPort}`;
  await waitFor(`${gateway}/health`);

  const bareProxyPort = await freePort();
  children.push(startProcess([join(root, "bench/bare-proxy.mjs"), "--port", String(bareProxyPort), "--upstream", upstream]));
  const bareProxy = `http://127.0.0.1:${bareProxyPort}`;
  await waitFor(`${bareProxy}/v1/models`);

  // The same gateway with a 100-rule access policy and route policy (the deciding
  // rules last): its ratio to "tollgate, api_key auth" is the policy's cost.
  const policyPort = await freePort();
  const policyConfig = join(work, "tollgate-policy.yaml");
  const accessRules = [
    ...Array.from({ length: 99 }, (_, i) => `      - {forbid: {actions: [read], resource: "model::blocked-${i}"}, when: "user with t${i} in teams"}`),
    '      - {permit: {actions: [read], resource: "model::*"}}',
  ];
  const routeRules = [...Array.from({ length: 99 }, (_, i) => `      - {forbid: {paths: ["/v1/area-${i}*"]}}`), '      - {permit: {paths: "*"}}'];
  writeFileSync(
    policyConfig,
    [
      "server:",
      `  port: ${policyPort}`,
      "  auth:",
      "    provider_config: {type: api_key}",
      "    access_policy:",
      ...accessRules,
      "    route_policy:",
      ...routeRules,
      `upstream: {url: "${upstream}"}`,
      `storage: {type: sqlite, db_path: "${join(work, "tollgate.db")}"}`,
      "logging: {level: warn}",
    ].join("\n"),
  );
  children.push(startProcess([cli, "serve", "--config", policyConfig]));
  const policyGateway = `http://127.0.0.1:${policyPort}`;
  await waitFor(`${policyGateway}/health`);

  // oauth2_token: three more gateways (JWT cached, JWT uncached, introspection), see oauth2-gateways.mjs.
  let oauth2Gateways = 0;
  oauth2 = await startOAuth2Scenarios({
    startGateway: async (providerConfig) => {
      const port = await freePort();
      const file = writeOAuth2Config(work, `oauth2-${oauth2Gateways++}`, { port, upstream, providerConfig });
      children.push(startProcess([cli, "serve", "--config", file]));
      await waitFor(`http://127.0.0.1:${port}/health`);
      return `http://127.0.0.1:${port}`;
    },
  });

  const scenarios = [
    { name: "direct to the upstream", url: `${upstream}/v1/models`, headers: {} },
    { name: "bare Node proxy (undici, no auth)", url: `${bareProxy}/v1/models`, headers: {} },
    { name: "tollgate, api_key auth", url: `${gateway}/v1/models`, headers: { authorization: `Bearer ${key}` } },
    { name: "tollgate, api_key auth, 100-rule access + route policy", url: `${policyGateway}/v1/models`, headers: { authorization: `Bearer ${key}` } },
    ...oauth2.scenarios,
    // Quotas on (SQLite, and Redis when reachable): see quota-gateways.mjs.
    ...(await (await import("./quota-gateways.mjs")).quotaScenarios({
      work,
      upstream,
      key,
      freePort,
      startGateway: async (file, port) => {
        children.push(startProcess([cli, "serve", "--config", file]));
        await waitFor(`http://127.0.0.1:${port}/health`);
      },
    })),
  ];
  for (const s of scenarios) {
    s.runs = [];
    if (WARMUP > 0) await load(s.url, s.headers).catch(() => {});
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const s of round % 2 === 0 ? scenarios : [...scenarios].reverse()) {
      const r = await load(s.url, s.headers);
      if (r.non2xx > 0 || r.errors > 0) throw new Error(`${s.name}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
      s.runs.push(r);
      console.error(`round ${round + 1}/${ROUNDS} ${s.name}: ${Math.round(r.rps)} req/s`);
    }
  }
  const base = median(scenarios[0].runs.map((r) => r.rps));
  const rows = scenarios.map((s) => ({
    scenario: s.name,
    rps: Math.round(median(s.runs.map((r) => r.rps))),
    p50_ms: median(s.runs.map((r) => r.p50)),
    p99_ms: median(s.runs.map((r) => r.p99)),
  }));
  // The third row is Tollgate with api_key auth alone: the other Tollgate rows'
  // ratio to it is what their feature (JWT, policy, quotas) costs.
  const bare = rows[1].rps;
  const apiKey = rows[2].rps;
  for (const r of rows) {
    r.ratio_direct = Number((r.rps / base).toFixed(2));
    r.ratio_bare_proxy = Number((r.rps / bare).toFixed(2));
    r.ratio_api_key = Number((r.rps / apiKey).toFixed(2));
  }
  const md = [
    `Node ${process.version}, ${CONNECTIONS} connections, ${DURATION}s per run, median of ${ROUNDS} rounds, GET /v1/models (small JSON).`,
    "",
    "| scenario | req/s | p50 ms | p99 ms | ratio to direct | ratio to bare proxy | ratio to api_key |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.rps} | ${r.p50_ms} | ${r.p99_ms} | ${r.ratio_direct.toFixed(2)} | ${r.ratio_bare_proxy.toFixed(2)} | ${r.ratio_api_key.toFixed(2)} |`,
    ),
    "",
  ].join("\n");
  // Micro-benchmarks: every bench/micro/*.mjs runs in its own process and
  // prints a Markdown section (a heading and a table) on stdout.
  const micro = [];
  for (const file of readdirSync(join(root, "bench/micro")).filter((f) => f.endsWith(".mjs") && !f.startsWith("_")).sort()) {
    const out = execFileSync(process.execPath, [join(root, "bench/micro", file)], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, BENCH_QUICK: DURATION <= 1 ? "1" : "" },
    });
    micro.push(out.toString().trim());
  }
  const report = [md, ...micro].join("\n\n") + "\n";
  console.log(report);
  mkdirSync(join(root, "bench/results"), { recursive: true });
  writeFileSync(join(root, "bench/results/latest.md"), report);
  writeFileSync(join(root, "bench/results/latest.json"), JSON.stringify({ node: process.version, connections: CONNECTIONS, duration: DURATION, rounds: ROUNDS, rows }, null, 2));
} finally {
  stopping = true;
  for (const c of children) c.kill("SIGTERM");
  oauth2?.close();
  rmSync(work, { recursive: true, force: true });
}
