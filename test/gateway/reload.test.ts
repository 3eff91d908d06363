import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Agent, request } from "undici";
import { eventually } from "../support/eventually.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Hot reload: SIGHUP (and --watch-config) re-reads the config; a valid one
// replaces policies, providers and limits at once without dropping requests
// or streams and without resetting quota counters; an invalid one is refused
// with its path and the old config stays in force.

const dora = { "x-user": "dora" };

function config(upstreamUrl: string, paths: string[], quota: Record<string, unknown> = {}) {
  return {
    server: {
      auth: {
        provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] },
        route_policy: [{ permit: { paths } }],
      },
      quota: { kvstore: { type: "sqlite", db_path: "./data/quota.db" }, authenticated_max_requests: 100_000, period: "day", ...quota },
    },
    upstream: { url: upstreamUrl },
  };
}

function rewrite(gateway: GatewayProcess, content: unknown): void {
  writeFileSync(join(gateway.dir, "tollgate.yaml"), typeof content === "string" ? content : JSON.stringify(content, null, 2));
}

/** Gateway processes that log a reload: each worker with TOLLGATE_TEST_WORKERS (see test/support/gateway.ts). */
const RELOADING_PROCESSES = Number(process.env.TOLLGATE_TEST_WORKERS ?? 1);

/**
 * Sends SIGHUP and waits for the outcome's log lines: one per process that
 * reloads (every worker), or one refusal (a supervisor refuses for all).
 */
async function hangUp(gateway: GatewayProcess, outcome: "configuration reloaded" | "configuration reload refused; the previous configuration stays in force") {
  const seen = gateway.logLines().filter((l) => l.msg === outcome).length;
  const expected = seen + (outcome === "configuration reloaded" ? RELOADING_PROCESSES : 1);
  gateway.child.kill("SIGHUP");
  const deadline = Date.now() + 10_000;
  for (;;) {
    const lines = gateway.logLines().filter((l) => l.msg === outcome);
    if (lines.length >= expected) return lines.at(-1)!;
    if (Date.now() > deadline) assert.fail(`no "${outcome}" line after SIGHUP\n${gateway.stdout()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("hot reload", { timeout: 300_000 }, () => {
  let upstream: UpstreamProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
  });

  after(async () => {
    await upstream?.close();
  });

  test("a SIGHUP'd route_policy applies to the next request", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/models*", "/v1/chat/*"]) });
    try {
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      rewrite(gateway, config(upstream.url, ["/v1/chat/*"]));
      await hangUp(gateway, "configuration reloaded");
      const res = await fetch(`${gateway.url}/v1/models`, { headers: dora });
      assert.equal(res.status, 403);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, "route_denied");
    } finally {
      await gateway.close();
    }
  });

  test("an invalid config is refused with the exact path of the problem; the old one stays in force", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/models*"]) });
    try {
      const broken = config(upstream.url, ["/v1/chat/*"]);
      (broken.server.auth.route_policy[0] as Record<string, unknown>).when = "user is a friend";
      rewrite(gateway, broken);
      const refused = await hangUp(gateway, "configuration reload refused; the previous configuration stays in force");
      assert.match(String(refused.err), /server\.auth\.route_policy\[0\]\.when/);
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);

      rewrite(gateway, "server: [unclosed");
      const unparsable = await hangUp(gateway, "configuration reload refused; the previous configuration stays in force");
      assert.match(String(unparsable.err), /tollgate\.yaml/);
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      assert.equal(gateway.child.exitCode, null);
    } finally {
      await gateway.close();
    }
  });

  test("quota counters survive a reload: the new limits apply to the counts already made", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/*"], { authenticated_max_requests: 5 }) });
    try {
      for (let i = 0; i < 3; i++) assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      rewrite(gateway, config(upstream.url, ["/v1/models*"], { authenticated_max_requests: 6 }));
      await hangUp(gateway, "configuration reloaded");
      const after = [];
      for (let i = 0; i < 4; i++) after.push((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status);
      // 3 made before + 3 more = the new limit of 6.
      assert.deepEqual(after, [200, 200, 200, 429]);
    } finally {
      await gateway.close();
    }
  });

  test("reloads under load lose no request and cut no stream (every one counted)", { timeout: 120_000 }, async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/*"]) });
    const agent = new Agent({ connections: 16 });
    try {
      let stop = false;
      const statuses = new Map<number, number>();
      let streamsComplete = 0;
      let streamsStarted = 0;
      const count = (status: number) => statuses.set(status, (statuses.get(status) ?? 0) + 1);

      const plain = async () => {
        while (!stop) {
          const res = await request(`${gateway.url}/v1/models`, { headers: dora, dispatcher: agent });
          await res.body.text();
          count(res.statusCode);
        }
      };
      // Streams that span several reloads: 20 words, 50 ms apart.
      const streams = async () => {
        while (!stop) {
          streamsStarted++;
          const res = await request(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            dispatcher: agent,
            headers: { ...dora, "content-type": "application/json", "x-demo-chunk-delay-ms": "50" },
            body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: Array.from({ length: 20 }, (_, i) => `w${i}`).join(" ") }] }),
          });
          const text = await res.body.text();
          count(res.statusCode);
          if (res.statusCode === 200 && text.includes("data: [DONE]") && text.includes("w19")) streamsComplete++;
        }
      };
      const workers = [plain(), plain(), plain(), plain(), streams(), streams()];
      // Alternate two valid configs (both permit the traffic) every 250 ms for about 3 s.
      for (let i = 0; i < 12; i++) {
        await new Promise((r) => setTimeout(r, 250));
        rewrite(gateway, config(upstream.url, i % 2 === 0 ? ["/v1/models*", "/v1/chat/*"] : ["/v1/*"]));
        gateway.child.kill("SIGHUP");
      }
      await new Promise((r) => setTimeout(r, 300));
      stop = true;
      await Promise.all(workers);

      const total = [...statuses.values()].reduce((a, b) => a + b, 0);
      assert.deepEqual([...statuses.keys()], [200], `statuses: ${JSON.stringify([...statuses])}`);
      assert.ok(total > 50, `only ${total} requests were made`);
      assert.equal(streamsComplete, streamsStarted, "every stream ran to its end");
      assert.ok(streamsStarted >= 4);
      const reloaded = gateway.logLines().filter((l) => l.msg === "configuration reloaded").length;
      assert.ok(reloaded >= 6, `only ${reloaded} reloads happened`);
      assert.equal(gateway.logLines().filter((l) => l.msg === "configuration reload refused; the previous configuration stays in force").length, 0);
    } finally {
      await agent.close();
      await gateway.close();
    }
  });

  test("a stream outlives two reloads, the second replacing the upstream pool it runs on", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/*"]) });
    try {
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { ...dora, "content-type": "application/json", "x-demo-chunk-delay-ms": "100" },
        body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: Array.from({ length: 20 }, (_, i) => `w${i}`).join(" ") }] }),
      });
      assert.equal(res.status, 200);
      const text = res.text();
      // Generation B keeps A's upstream pool; C gets a new one. Releasing B must not close the pool A's stream still uses.
      rewrite(gateway, config(upstream.url, ["/v1/chat/*", "/v1/models*"]));
      await hangUp(gateway, "configuration reloaded");
      const next = config(upstream.url, ["/v1/*"]);
      rewrite(gateway, { ...next, upstream: { ...next.upstream, connect_timeout_ms: 5000 } });
      await hangUp(gateway, "configuration reloaded");
      const body = await text;
      assert.match(body, /w19/);
      assert.match(body, /data: \[DONE\]/);
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
    } finally {
      await gateway.close();
    }
  });

  test("--watch-config reloads when the file changes", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/models*"]), args: ["--watch-config"] });
    try {
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      rewrite(gateway, config(upstream.url, ["/v1/chat/*"]));
      // One process reloads (with --workers, the supervisor validates, then tells every worker).
      await gateway.waitForLog((l) => /^configuration reload/.test(String(l.msg)) && l.trigger === "file change", 10_000);
      await eventually(async () => (await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, (status) => status === 403, { intervalMs: 50 });
    } finally {
      await gateway.close();
    }
  });

  test("--watch-config sees a Kubernetes ConfigMap update: the ..data symlink swapped to a new timestamped folder", async () => {
    // The kubelet's layout: tollgate.yaml -> ..data/tollgate.yaml, ..data -> ..<timestamp>/.
    const mount = mkdtempSync(join(tmpdir(), "tollgate-configmap-"));
    const version = (name: string, content: unknown) => {
      mkdirSync(join(mount, name));
      writeFileSync(join(mount, name, "tollgate.yaml"), JSON.stringify(content, null, 2));
    };
    version("..2026_12_06_01_00_00.000000001", config(upstream.url, ["/v1/models*"]));
    symlinkSync("..2026_12_06_01_00_00.000000001", join(mount, "..data"));
    symlinkSync("..data/tollgate.yaml", join(mount, "tollgate.yaml"));
    const gateway = await startGateway({ args: ["--config", join(mount, "tollgate.yaml"), "--watch-config"] });
    try {
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      // An update, step by step as the kubelet's AtomicWriter does it: new folder, ..data_tmp, rename over ..data, old folder removed.
      version("..2026_12_06_01_05_00.000000002", config(upstream.url, ["/v1/chat/*"]));
      symlinkSync("..2026_12_06_01_05_00.000000002", join(mount, "..data_tmp"));
      renameSync(join(mount, "..data_tmp"), join(mount, "..data"));
      rmSync(join(mount, "..2026_12_06_01_00_00.000000001"), { recursive: true });
      await gateway.waitForLog((l) => /^configuration reload/.test(String(l.msg)) && l.trigger === "file change", 10_000);
      await eventually(async () => (await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, (status) => status === 403, { intervalMs: 50 });
      // Nothing else in the folder reloads it: a file written beside the config changes nothing.
      const reloads = () => gateway.logLines().filter((l) => /^configuration reload/.test(String(l.msg)) && l.trigger === "file change").length;
      const before = reloads();
      writeFileSync(join(mount, "unrelated.db"), "x");
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(reloads(), before);
    } finally {
      await gateway.close();
      rmSync(mount, { recursive: true, force: true });
    }
  });

  test("settings that need a restart are named and keep their running values", async () => {
    const gateway = await startGateway({ config: config(upstream.url, ["/v1/*"]) });
    try {
      const next = config(upstream.url, ["/v1/*"]);
      rewrite(gateway, { ...next, server: { ...next.server, port: 1 }, logging: { level: "debug" } });
      await hangUp(gateway, "configuration reloaded");
      const warning = await gateway.waitForLog((l) => /need a restart/.test(String(l.msg)));
      assert.deepEqual(warning.keys, ["logging"]);
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
    } finally {
      await gateway.close();
    }
  });
});
