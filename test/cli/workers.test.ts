import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { Agent, request } from "undici";
import { distFile, readCmdline, startGateway, type GatewayProcess } from "../support/gateway.js";
import { requireService } from "../support/services.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { clearOfWindowEnd } from "../support/windows.js";

// `tollgate serve --workers 2`: a supervisor and two worker processes sharing
// the port, as real processes, seen from outside.

const identity = { "x-user": "dora" };

function headerAuthConfig(upstreamUrl: string, auth: Record<string, unknown> = {}) {
  return {
    server: { auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] }, ...auth } },
    upstream: { url: upstreamUrl },
  };
}

/** A streamed chat completion of six words, one every 150 ms, on its own connection. */
function chatStream(url: string): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { ...identity, "content-type": "application/json", "x-demo-chunk-delay-ms": "150", connection: "close" },
    body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: "a b c d e f" }] }),
  });
}

/** Starts `serve --workers 2` (ready once both workers listen); `workerPids` from the supervisor's `workers ready` line. */
async function startWorkers(config: Record<string, unknown>, args: readonly string[] = []): Promise<GatewayProcess & { workerPids: number[] }> {
  const gateway = await startGateway({ config, args: ["--workers", "2", ...args] });
  try {
    const ready = await gateway.waitForLog((l) => l.msg === "workers ready", 30_000);
    return Object.assign(gateway, { workerPids: ready.worker_pids as number[] });
  } catch (err) {
    await gateway.close();
    throw err;
  }
}

/**
 * The per-request log lines must say which process wrote them (`pid`), or a
 * test cannot tell the workers apart. Without it: skips, saying why; under
 * CI=true fails, so that CI never passes by skipping (as `requireService`).
 */
function requirePidInLogs(t: TestContext, gateway: GatewayProcess): boolean {
  if (gateway.logLines().some((l) => l.msg === "listening" && typeof l.pid === "number")) return true;
  const reason = "log lines carry no pid (src/core/log.ts): the workers cannot be told apart";
  if (process.env.CI === "true") throw new Error(`${reason}; under CI=true this fails the run`);
  t.skip(reason);
  console.error(`skipped: ${reason}`);
  return false;
}

/**
 * Whether `pid` still runs `gateway`'s command (its config lives in
 * `gateway.dir`): by the command line where there is /proc, so that neither a
 * reused pid nor an unreaped zombie counts; else by `kill(pid, 0)`.
 */
function running(gateway: GatewayProcess, pid: number): boolean {
  if (existsSync("/proc/self/cmdline")) return readCmdline(pid).includes(gateway.dir);
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every pid a gateway ever ran: the supervisor and each worker it started. */
function everyPid(gateway: GatewayProcess): number[] {
  const workers = gateway.logLines().filter((l) => l.msg === "worker started").map((l) => l.worker_pid as number);
  return [gateway.child.pid!, ...workers];
}

/** The pids of `gateway` still running. */
function stillRunning(gateway: GatewayProcess, pids: readonly number[] = everyPid(gateway)): number[] {
  return pids.filter((pid) => running(gateway, pid));
}

/** Processes still running with `dir` (the gateway's temporary directory) in their command line. */
function processesIn(dir: string): number[] {
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  } catch {
    return []; // no /proc: the pid checks carry the test
  }
  return pids.map(Number).filter((pid) => pid !== process.pid && readCmdline(pid).includes(dir));
}

/** The pids that wrote a per-request log line for `path`. */
function answeringPids(gateway: GatewayProcess, path: string): Set<number> {
  return new Set(gateway.logLines().filter((l) => l.msg === "request" && l.path === path).map((l) => l.pid as number));
}

/**
 * `count` GETs, `concurrency` at a time, each on a new connection (so that
 * the cluster spreads them over the workers); resolves with the statuses,
 * 0 for a request that failed without a response.
 */
async function load(url: string, count: number, concurrency = 8, headers: Record<string, string> = identity): Promise<number[]> {
  const statuses: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        statuses.push(
          await request(url, { headers, reset: true, headersTimeout: 5_000, bodyTimeout: 5_000 }).then(
            async (r) => (await r.body.dump(), r.statusCode),
            () => 0,
          ),
        );
      }
    }),
  );
  return statuses;
}

function tally(statuses: readonly number[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

/** Stops the gateway with `signal` and checks that the supervisor and every worker are gone. */
async function stopAndCheckGone(gateway: GatewayProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  const code = await gateway.stop(signal, 40_000);
  const left = stillRunning(gateway);
  assert.deepEqual(left, [], `processes left behind: ${left.join(", ")}`);
  assert.deepEqual(processesIn(gateway.dir), []);
  return code;
}

describe("serve --workers", { timeout: 600_000 }, () => {
  let upstream: UpstreamProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
  });

  after(async () => {
    await upstream?.close();
  });

  test("two workers both answer requests, and every request succeeds", { timeout: 60_000 }, async (t) => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      if (!requirePidInLogs(t, gateway)) return;
      assert.equal(gateway.workerPids.length, 2);
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 100)), { 200: 100 });
      await gateway.waitForLog(() => gateway.logLines().filter((l) => l.msg === "request").length >= 100);
      assert.deepEqual([...answeringPids(gateway, "/v1/models")].sort(), [...gateway.workerPids].sort());
      // The supervisor has no request logic: it never writes a request line.
      assert.ok(!answeringPids(gateway, "/v1/models").has(gateway.child.pid!));
      assert.equal(await stopAndCheckGone(gateway), 0);
    } finally {
      await gateway.close();
    }
  });

  test("a worker killed with SIGKILL is replaced at once, and the other carries the traffic meanwhile", { timeout: 90_000 }, async (t) => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      const [victim, survivor] = gateway.workerPids as [number, number];
      const concurrency = 2;
      const traffic = load(`${gateway.url}/v1/models`, 200, concurrency);
      await new Promise((r) => setTimeout(r, 300));
      process.kill(victim, "SIGKILL");
      const statuses = await traffic;

      const died = await gateway.waitForLog((l) => l.msg === "worker died; starting a replacement");
      assert.equal(died.worker_pid, victim);
      assert.equal(died.signal, "SIGKILL");
      const replacement = await gateway.waitForLog((l) => l.msg === "worker started" && !gateway.workerPids.includes(l.worker_pid as number));
      assert.ok((replacement.time as number) - (died.time as number) < 1000, "the replacement is started within a second");

      // At most the requests that were in flight on the killed worker fail; none is answered with an error.
      const failed = statuses.filter((s) => s !== 200);
      assert.ok(failed.every((s) => s === 0), `unexpected statuses ${JSON.stringify(tally(statuses))}`);
      assert.ok(failed.length <= concurrency, `${failed.length} requests lost`);

      // The replacement takes its share once it listens.
      if (!requirePidInLogs(t, gateway)) return;
      assert.ok(answeringPids(gateway, "/v1/models").has(survivor));
      const newPid = replacement.worker_pid as number;
      await gateway.waitForLog((l) => l.msg === "listening" && l.pid === newPid, 30_000);
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 100)), { 200: 100 });
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(answeringPids(gateway, "/v1/models").has(newPid), "the replacement answers requests");
      assert.equal(await stopAndCheckGone(gateway), 0);
    } finally {
      await gateway.close();
    }
  });

  test("SIGTERM lets open streams on both workers finish, then exits 0 with no worker left", { timeout: 60_000 }, async (t) => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      // Several streams on separate connections, so that both workers hold some.
      const streams = await Promise.all(Array.from({ length: 4 }, () => chatStream(gateway.url)));
      for (const res of streams) assert.equal(res.status, 200);
      const stopped = stopAndCheckGone(gateway);
      const bodies = await Promise.all(streams.map((res) => res.text()));
      for (const body of bodies) {
        assert.match(body, /"content":" f"/);
        assert.match(body, /data: \[DONE\]\n\n$/);
      }
      assert.equal(await stopped, 0);
      if (!requirePidInLogs(t, gateway)) return;
      const draining = gateway.logLines().filter((l) => /^shutting down: draining in-flight/.test(String(l.msg)));
      assert.equal(new Set(draining.map((l) => l.pid)).size, 2, "both workers drained");
    } finally {
      await gateway.close();
    }
  });

  // One quota store shared by both workers: the SQLite file, or Redis (the single source of truth, never per-worker counters).
  const quotaStores: { name: string; kvstore: (t: TestContext) => Promise<Record<string, unknown> | undefined> }[] = [
    { name: "one SQLite file", kvstore: async () => ({ type: "sqlite", db_path: "./quota.db" }) },
    {
      name: "Redis",
      kvstore: async (t) => {
        const url = await requireService(t, "redis");
        return url === undefined ? undefined : { type: "redis", url, namespace: `tollgate-test:${randomUUID()}:`, command_timeout_ms: 15_000 };
      },
    },
  ];
  for (const store of quotaStores) {
    test(`a quota of 60 against 180 concurrent requests admits exactly 60 with two workers on ${store.name}`, { timeout: 60_000 }, async (t) => {
      const kvstore = await store.kvstore(t);
      if (!kvstore) return;
      const config = headerAuthConfig(upstream.url);
      const gateway = await startWorkers({
        ...config,
        server: { ...config.server, quota: { kvstore, authenticated_max_requests: 60, period: "hour" } },
      });
      try {
        assert.deepEqual(await burst(gateway, 180), { 200: 60, 429: 120 });
        if (!requirePidInLogs(t, gateway)) return;
        // A line is written once its response has gone: wait for all 180 (a refusal's line names no path) before asking who wrote them.
        const burstLines = () => gateway.logLines().filter((l) => l.msg === "request" && (l.path === "/v1/models" || l.status === 429));
        await gateway.waitForLog(() => burstLines().length >= 180);
        assert.equal(answeringPids(gateway, "/v1/models").size, 2, "both workers took part");
      } finally {
        await gateway.stop();
        await gateway.close();
      }
    });
  }

  test("/metrics counts the requests every worker served, whichever worker answers the scrape", { timeout: 60_000 }, async (t) => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      const before = await allowedRequests(gateway.url);
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 60)), { 200: 60 });
      // Several scrapes on new connections land on both workers: each shows the whole gateway.
      for (let i = 0; i < 4; i++) assert.equal(await allowedRequests(gateway.url), before + 60);
      if (!requirePidInLogs(t, gateway)) return;
      // A line is written once its response has gone: wait for them all before asking who wrote them.
      await gateway.waitForLog(() => gateway.logLines().filter((l) => l.msg === "request" && (l.path === "/v1/models" || l.path === "/metrics")).length >= 64);
      assert.equal(answeringPids(gateway, "/v1/models").size, 2, "both workers served requests");
      assert.equal(answeringPids(gateway, "/metrics").size, 2, "both workers answered scrapes");
    } finally {
      await gateway.stop();
      await gateway.close();
    }
  });

  test("a route policy changed in the file and SIGHUP'd to the supervisor applies on every worker", { timeout: 60_000 }, async (t) => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 20)), { 200: 20 });
      writeFileSync(join(gateway.dir, "tollgate.yaml"), JSON.stringify(headerAuthConfig(upstream.url, { route_policy: [{ forbid: { paths: ["/v1/models*"] } }, { permit: { paths: ["*"] } }] })));
      gateway.child.kill("SIGHUP");
      await gateway.waitForLog(() => gateway.logLines().filter((l) => l.msg === "configuration reloaded").length === 2, 15_000);
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 40)), { 403: 40 });
      if (!requirePidInLogs(t, gateway)) return;
      const refusing = new Set(gateway.logLines().filter((l) => l.msg === "request" && l.status === 403).map((l) => l.pid));
      assert.equal(refusing.size, 2, "both workers refuse the path");
    } finally {
      await gateway.stop();
      await gateway.close();
    }
  });

  test("the first start with the api_key provider prints one admin key, once, that every worker accepts", { timeout: 60_000 }, async () => {
    const gateway = await startWorkers({ server: { auth: { provider_config: { type: "api_key" } } }, upstream: { url: upstream.url } });
    try {
      assert.equal(gateway.stderr().split("Tollgate created the first API key").length - 1, 1, gateway.stderr());
      const keys = new Set(gateway.stderr().match(/tg_[A-Za-z0-9_-]{43}/g));
      assert.equal(keys.size, 1);
      const [key] = keys;
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 20, 4, { authorization: `Bearer ${key}` })), { 200: 20 });
      assert.equal(gateway.logLines().filter((l) => l.msg === "created the first admin API key").length, 1);
    } finally {
      await gateway.stop();
      await gateway.close();
    }
  });

  test("an invalid config SIGHUP'd to the supervisor is refused, naming the path, and no worker reloads", { timeout: 60_000 }, async () => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      writeFileSync(join(gateway.dir, "tollgate.yaml"), JSON.stringify({ ...headerAuthConfig(upstream.url), server: { port: "not a port" } }));
      gateway.child.kill("SIGHUP");
      const refused = await gateway.waitForLog((l) => /reload refused/.test(String(l.msg)));
      assert.equal(refused.component, "supervisor");
      assert.ok(String(refused.err).startsWith(`${join(gateway.dir, "tollgate.yaml")}: invalid configuration`), String(refused.err));
      assert.match(String(refused.err), /server\.port/);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(!gateway.logLines().some((l) => l.msg === "configuration reloaded" || (/reload refused/.test(String(l.msg)) && l.component !== "supervisor")));
      assert.deepEqual(tally(await load(`${gateway.url}/v1/models`, 20)), { 200: 20 });
    } finally {
      await gateway.stop();
      await gateway.close();
    }
  });

  test("an invalid config with --workers 2 exits 1 naming the path, and starts no process", { timeout: 30_000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), "tollgate-workers-"));
    try {
      const file = join(dir, "tollgate.yaml");
      writeFileSync(file, JSON.stringify({ server: { port: 99999 } }));
      const run = spawnSync(process.execPath, [distFile("cli/main.js"), "serve", "--config", file, "--workers", "2"], { cwd: dir, encoding: "utf8", timeout: 20_000 });
      assert.equal(run.status, 1);
      assert.ok(run.stderr.startsWith(`tollgate: ${file}: invalid configuration`), run.stderr);
      assert.match(run.stderr, /server\.port/);
      assert.doesNotMatch(run.stdout, /worker started/);
      assert.deepEqual(processesIn(dir), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a worker that cannot start stops the supervisor with exit 1 and leaves no process", { timeout: 60_000 }, async () => {
    const config = headerAuthConfig(upstream.url);
    // Files that can be read (the supervisor checks that before any worker starts) but hold no
    // certificate: only a worker, building its TLS listener, finds out.
    const pem = mkdtempSync(join(tmpdir(), "tollgate-workers-pem-"));
    writeFileSync(join(pem, "cert.pem"), "not a certificate\n");
    writeFileSync(join(pem, "key.pem"), "not a key\n");
    let message = "";
    try {
      await assert.rejects(
        startGateway({
          config: { ...config, server: { ...config.server, tls: { cert_file: join(pem, "cert.pem"), key_file: join(pem, "key.pem") } } },
          args: ["--workers", "2"],
        }),
        (err: Error) => ((message = err.message), true),
      );
    } finally {
      rmSync(pem, { recursive: true, force: true });
    }
    // startGateway saw the supervisor exit by itself: with 1, each worker's reason, and its own one line.
    assert.match(message, /^tollgate serve exited \(1\) before listening/);
    assert.match(message, /server\.tls: cannot use the certificate and key/);
    assert.match(message, /tollgate: worker \d+ exited \(code 1\) before listening/);
    const dir = /(\S+)\/tollgate\.yaml: invalid configuration/.exec(message)?.[1];
    assert.ok(dir, message);
    assert.deepEqual(processesIn(dir), []);
  });

  test("workers whose supervisor is killed finish their open streams and exit instead of lingering", { timeout: 60_000 }, async () => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      const streams = await Promise.all(Array.from({ length: 4 }, () => chatStream(gateway.url)));
      for (const res of streams) assert.equal(res.status, 200);
      gateway.child.kill("SIGKILL");
      for (const body of await Promise.all(streams.map((res) => res.text()))) assert.match(body, /data: \[DONE\]\n\n$/);
      const deadline = Date.now() + 15_000;
      while (stillRunning(gateway, gateway.workerPids).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(stillRunning(gateway, gateway.workerPids), []);
    } finally {
      await gateway.close();
    }
  });

  test("five worker deaths within ten seconds stop the supervisor with a crash-loop error", { timeout: 60_000 }, async () => {
    const gateway = await startWorkers(headerAuthConfig(upstream.url));
    try {
      const killed = new Set<number>();
      const exited = new Promise<number | null>((resolve) => gateway.child.once("exit", (code) => resolve(code)));
      while (killed.size < 5 && gateway.child.exitCode === null) {
        for (const pid of everyPid(gateway).slice(1)) {
          if (killed.has(pid) || !running(gateway, pid)) continue;
          process.kill(pid, "SIGKILL");
          killed.add(pid);
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(await exited, 1);
      assert.ok(gateway.logLines().some((l) => l.component === "supervisor" && /^crash loop: 5 worker exits within 10 s/.test(String(l.msg))));
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(stillRunning(gateway), []);
    } finally {
      await gateway.close();
    }
  });

  /** Sends `count` requests all at once, each on its own connection; counts the statuses. */
  async function burst(gateway: GatewayProcess, count: number): Promise<Record<number, number>> {
    await clearOfWindowEnd("hour", 30_000);
    const agent = new Agent({ connections: count });
    try {
      const statuses = await Promise.all(
        Array.from({ length: count }, async () => {
          const res = await request(`${gateway.url}/v1/models`, { headers: identity, dispatcher: agent });
          await res.body.dump();
          return res.statusCode;
        }),
      );
      return tally(statuses);
    } finally {
      await agent.close();
    }
  }
});

/** The sum of `tollgate_requests_total` over requests that passed every stage, as GET /metrics shows it now. */
async function allowedRequests(url: string): Promise<number> {
  const res = await request(`${url}/metrics`, { headers: identity, reset: true });
  const text = await res.body.text();
  assert.equal(res.statusCode, 200, text);
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("tollgate_requests_total{") && line.includes('decision="allowed"')) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}
