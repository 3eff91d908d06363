import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { validateConfig } from "../../src/core/config/load.js";
import { startDemoUpstream, type DemoUpstream } from "../../src/demo/upstream.js";
import { startGenerations } from "../../src/gateway/generations.js";
import { createOwnEndpoints } from "../../src/gateway/own-endpoints.js";
import { createGateway, type Gateway } from "../../src/gateway/server.js";
import { captureLog } from "../support/log.js";
import { parsePrometheus } from "../support/prometheus.js";
import { closedPort } from "../support/refusal.js";

// Passive health of several upstreams (docs/upstreams.md#passive-health):
// the gateway in this process, so that the thresholds (5 failures, 10 s) can
// be shortened without a config key; the upstreams are real servers and a
// port nobody listens on.

const FAILURES = 2;
const SKIP_MS = 1500;

describe("passive health of upstreams", { timeout: 60_000 }, () => {
  let live: DemoUpstream;
  let gateway: Gateway;
  let url: string;

  before(async () => {
    live = await startDemoUpstream({ models: ["m"] });
    const [dead, deadSolo] = [await closedPort(), await closedPort()];
    const config = validateConfig({
      server: { port: 0, host: "127.0.0.1" },
      upstreams: [
        { name: "down", url: `http://127.0.0.1:${dead}`, models: ["m"], connect_timeout_ms: 500 },
        { name: "up", url: live.url, models: ["m"] },
        { name: "solo", url: `http://127.0.0.1:${deadSolo}`, models: ["solo-*"], connect_timeout_ms: 500 },
      ],
    });
    gateway = await createGateway({ config, log: captureLog("silent").log, upstreamHealth: { failures: FAILURES, skipMs: SKIP_MS } });
    ({ url } = await gateway.listen());
  });

  after(async () => {
    await gateway?.close();
    await live?.close();
  });

  async function chat(model: string): Promise<number> {
    const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }) });
    await res.arrayBuffer();
    return res.status;
  }

  async function scrape() {
    // The gateway's own families only: Node's event-loop lag reads NaN before its first sample.
    const text = await (await fetch(`${url}/metrics`)).text();
    return parsePrometheus(text.split("\n").filter((line) => line.includes("tollgate_")).join("\n"));
  }

  async function ready(): Promise<{ status: number; body: { checks: Record<string, string>; upstreams: Record<string, string>; failing?: string[] } }> {
    const res = await fetch(`${url}/ready`);
    return { status: res.status, body: (await res.json()) as never };
  }

  test("an upstream failing in a row is skipped (healthy 0, its failures counted, /ready still ready while another serves its models), then used again after the skip", async () => {
    assert.equal((await scrape()).value("tollgate_upstream_healthy", { upstream: "down" }), 1);
    for (let i = 0; i < FAILURES; i++) assert.equal(await chat("m"), 200, "retried on up");
    let metrics = await scrape();
    assert.equal(metrics.value("tollgate_upstream_failures_total", { upstream: "down" }), FAILURES);
    assert.equal(metrics.value("tollgate_upstream_healthy", { upstream: "down" }), 0);
    assert.equal(metrics.value("tollgate_upstream_healthy", { upstream: "up" }), 1);
    const skipped = await ready();
    assert.equal(skipped.status, 200, "m is still served by up");
    assert.deepEqual(skipped.body.upstreams, { down: "skipped", up: "ok", solo: "ok" });
    assert.equal(skipped.body.checks.upstreams, "ok");

    // Skipped: not even tried.
    assert.equal(await chat("m"), 200);
    assert.equal((await scrape()).value("tollgate_upstream_failures_total", { upstream: "down" }), FAILURES);

    await new Promise((r) => setTimeout(r, SKIP_MS + 100));
    metrics = await scrape();
    assert.equal(metrics.value("tollgate_upstream_healthy", { upstream: "down" }), 1, "used again after the skip");
    assert.equal(await chat("m"), 200);
    metrics = await scrape();
    assert.equal(metrics.value("tollgate_upstream_failures_total", { upstream: "down" }), FAILURES + 1, "tried again");
    assert.equal(metrics.value("tollgate_upstream_healthy", { upstream: "down" }), 0, "one more failure before a success: skipped again at once");
  });

  test("a model pattern whose only upstream is skipped makes /ready 503 naming upstreams; a skipped upstream is still tried when it is the only one", async () => {
    for (let i = 0; i < FAILURES; i++) assert.equal(await chat("solo-1"), 502);
    const notReady = await ready();
    assert.equal(notReady.status, 503);
    assert.equal(notReady.body.checks.upstreams, "unusable");
    assert.deepEqual(notReady.body.failing, ["upstreams"]);
    assert.equal(notReady.body.upstreams.solo, "skipped");
    assert.equal(await chat("solo-1"), 502);
    assert.equal((await scrape()).value("tollgate_upstream_failures_total", { upstream: "solo" }), FAILURES + 1, "all skipped: tried anyway");
  });
});

describe("upstreams across a reload", () => {
  test("a reload keeps each unchanged upstream (its pool, requests in flight and health), replaces a changed one and drops a removed one once its requests end", async () => {
    const { log } = captureLog("silent");
    const upstreams = (list: Record<string, unknown>[]) => validateConfig({ upstreams: list });
    const a = { name: "a", url: "http://127.0.0.1:1", models: ["m"] };
    const b = { name: "b", url: "http://127.0.0.1:2", models: ["m"] };
    const own = createOwnEndpoints({ metrics: upstreams([a]).metrics, renderMetrics: async () => "", metricsContentType: "text/plain", log });
    const generations = await startGenerations({ config: upstreams([a, b]), log, store: undefined, provider: undefined, own, observers: {} });
    try {
      const first = generations.enter();
      const [oldA, oldB] = first.router.upstreams;
      oldA!.failed();
      oldA!.inFlight = 1;

      await generations.reload(upstreams([a, { ...b, connect_timeout_ms: 500 }, { name: "c", url: "http://127.0.0.1:3", models: ["*"] }]));
      const second = generations.current;
      assert.equal(second.router.named("a"), oldA, "unchanged: the same upstream");
      assert.equal(second.router.named("a")!.failures, 1, "its health carried over");
      assert.equal(second.router.named("a")!.inFlight, 1, "its load carried over");
      assert.notEqual(second.router.named("b"), oldB, "changed: a new one");
      assert.ok(second.router.named("c"));
      assert.equal(first.router.named("b"), oldB, "the request in flight keeps its generation's upstreams");

      await generations.reload(upstreams([{ name: "c", url: "http://127.0.0.1:3", models: ["*"] }]));
      assert.equal(generations.current.router.named("a"), undefined, "removed");
      generations.leave(first);
    } finally {
      await generations.close();
    }
  });
});
