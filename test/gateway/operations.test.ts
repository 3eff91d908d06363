import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { closedPort } from "../support/refusal.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { parsePrometheus } from "../support/prometheus.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Operating the gateway: GET /metrics (Prometheus text, scraped and parsed),
// one log line per request with a request id, and credentials never logged.

const dora = { "x-user": "dora" };
const limited = { "x-user": "lim", "x-user-attributes": JSON.stringify({ roles: ["limited"] }) };

function operatedConfig(upstreamUrl: string, extra: Record<string, unknown> = {}) {
  return {
    server: {
      auth: {
        provider_config: { type: "upstream_header", principal_header: "x-user", attributes_header: "x-user-attributes", trusted_proxies: ["127.0.0.1"] },
        route_policy: [{ permit: { paths: ["/v1/*"] } }],
        access_policy: [{ permit: { actions: ["read", "create"], resource: "model::demo-small" } }],
      },
      quota: {
        kvstore: { type: "sqlite", db_path: "./data/quota.db" },
        authenticated_max_requests: 1000,
        period: "day",
        tiers: [{ name: "limited", when: "user with limited in roles", limits: [{ requests: 1, period: "day" }] }],
      },
    },
    upstream: { url: upstreamUrl },
    logging: { level: "trace" },
    ...extra,
  };
}

async function scrape(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, metrics: parsePrometheus(text) };
}

describe("operations", { timeout: 240_000 }, () => {
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
    gateway = await startGateway({ config: operatedConfig(upstream.url) });
  });

  after(async () => {
    await gateway?.close();
    await upstream?.close();
  });

  test("GET /metrics counts every request by route group, status and decision", async () => {
    const get = (path: string, headers: Record<string, string> = {}) => fetch(`${gateway.url}${path}`, { headers }).then((r) => r.status);
    const before = (await scrape(`${gateway.url}/metrics`)).metrics;
    const statuses = [
      await get("/v1/models", dora),
      await get("/v1/models", dora),
      await get("/v1/models"), // no identity: 401
      await get("/api/version", dora), // declared (Ollama's), refused by route_policy: 403
      await get("/v1/models/secret-model", dora), // access_policy hides it: 404
      await get("/v1/models", limited),
      await get("/v1/models", limited), // tier of 1 a day: 429
      await get("/health"),
    ];
    assert.deepEqual(statuses, [200, 200, 401, 403, 404, 200, 429, 200]);

    const { text, metrics } = await scrape(`${gateway.url}/metrics`);
    const delta = (labels: Record<string, string>) =>
      metrics.value("tollgate_requests_total", labels) - before.value("tollgate_requests_total", labels);
    assert.equal(delta({ route: "models", status: "200", decision: "allowed" }), 3);
    assert.equal(delta({ route: "models", status: "401", decision: "401" }), 1);
    assert.equal(delta({ route: "other", status: "403", decision: "403" }), 1);
    assert.equal(delta({ route: "models", status: "404", decision: "404-hidden" }), 1);
    assert.equal(delta({ route: "models", status: "429", decision: "429" }), 1);
    assert.equal(delta({ route: "health", status: "200", decision: "public" }), 1);
    assert.equal(metrics.value("tollgate_quota_rejections_total") - before.value("tollgate_quota_rejections_total"), 1);
    // Authentication latency by provider, upstream latency, and Node's own process metrics.
    assert.ok(metrics.value("tollgate_authentication_duration_seconds_count", { provider: "upstream_header", outcome: "ok" }) >= 6);
    assert.ok(metrics.value("tollgate_authentication_duration_seconds_count", { provider: "upstream_header", outcome: "refused" }) >= 1);
    assert.ok(metrics.value("tollgate_upstream_duration_seconds_count", { route: "models" }) >= 3);
    assert.equal(metrics.types.get("tollgate_request_duration_seconds"), "histogram");
    assert.ok(metrics.value("process_resident_memory_bytes") > 0);
    // Bounded labels only: no principal and no raw path ever becomes a label value.
    for (const secret of ["dora", "lim", "secret-model", "/api/version"]) assert.ok(!text.includes(secret), `metrics mention ${secret}`);
  });

  test("every request gets one log line with its request id, decision, latency and upstream latency", async () => {
    const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...dora, "x-request-id": "trace-abc.123" } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("x-request-id"), "trace-abc.123");
    // Passed upstream, so the upstream's logs can be joined with ours.
    await upstream.waitForRequest((r) => r.headers["x-request-id"] === "trace-abc.123");
    const line = await gateway.waitForLog((l) => l.msg === "request" && l.reqId === "trace-abc.123");
    assert.equal(line.method, "GET");
    assert.equal(line.path, "/v1/models");
    assert.equal(line.status, 200);
    assert.equal(line.decision, "allowed");
    assert.equal(line.principal, "dora");
    assert.equal(typeof line.ms, "number");
    assert.equal(typeof line.upstream_ms, "number");
    assert.equal(gateway.logLines().filter((l) => l.msg === "request" && l.reqId === "trace-abc.123").length, 1);

    // A refused request has its line too, and an id of its own.
    const refused = await fetch(`${gateway.url}/v1/models`);
    assert.equal(refused.status, 401);
    const id = refused.headers.get("x-request-id")!;
    assert.match(id, /^[0-9a-f-]{36}$/);
    const refusedLine = await gateway.waitForLog((l) => l.msg === "request" && l.reqId === id);
    assert.equal(refusedLine.decision, "401");
    assert.equal(refusedLine.upstream_ms, undefined);
  });

  test("a malformed X-Request-Id is replaced, never echoed or logged", async () => {
    const hostile = "evil\tid<script>".padEnd(40, "x");
    const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...dora, "x-request-id": hostile } });
    assert.equal(res.status, 200);
    const id = res.headers.get("x-request-id")!;
    assert.match(id, /^[0-9a-f-]{36}$/);
    await upstream.waitForRequest((r) => r.headers["x-request-id"] === id);
    assert.ok(!gateway.stdout().includes("<script>"));
  });

  test("credentials in headers, cookies and the query never reach the log, even at trace level", async () => {
    const bearer = "sk-live-0123456789abcdefSECRET";
    const cookie = "session=cookie-secret-value-42";
    const queryKey = "query-secret-key-77";
    const res = await fetch(`${gateway.url}/v1/models?api_key=${queryKey}`, {
      headers: { ...dora, authorization: `Bearer ${bearer}`, cookie, "x-api-key": "header-secret-key-99" },
    });
    assert.equal(res.status, 200);
    await gateway.waitForLog((l) => l.msg === "request" && l.path === "/v1/models" && l.principal === "dora");
    const everything = gateway.stdout() + gateway.stderr();
    for (const secret of [bearer, "cookie-secret-value-42", queryKey, "header-secret-key-99"]) {
      assert.ok(!everything.includes(secret), `the log holds ${secret}`);
    }
  });

  test("/metrics and /ready are the gateway's own: never forwarded, never authenticated", async () => {
    const post = await fetch(`${gateway.url}/metrics`, { method: "POST", headers: dora });
    assert.equal(post.status, 405);
    const ready = await fetch(`${gateway.url}/ready`, { method: "DELETE" });
    assert.equal(ready.status, 405);
    const requests = await upstream.requests();
    assert.ok(!requests.some((r) => r.path === "/metrics" || r.path === "/ready"));
  });
});

describe("metrics placement", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
  });

  after(async () => {
    await upstream?.close();
  });

  test("metrics.port serves /metrics on its own port; the main port then treats /metrics like any path", async () => {
    const port = await closedPort();
    const gateway = await startGateway({ config: operatedConfig(upstream.url, { metrics: { port, host: "127.0.0.1" } }) });
    try {
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: dora })).status, 200);
      const { metrics } = await scrape(`http://127.0.0.1:${port}/metrics`);
      assert.ok(metrics.value("tollgate_requests_total", { route: "models", decision: "allowed" }) >= 1);
      assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
      // On the main port, /metrics is an ordinary path: authenticated, then, declared by no preset (the
      // upstream's own metrics are not forwarded), 404 route_not_found.
      assert.equal((await fetch(`${gateway.url}/metrics`)).status, 401);
      const plain = await fetch(`${gateway.url}/metrics`, { headers: dora });
      assert.equal(plain.status, 404);
      assert.equal(((await plain.json()) as { error: { code: string } }).error.code, "route_not_found");
    } finally {
      await gateway.close();
    }
  });

  test("metrics.enabled false serves no metrics", async () => {
    const gateway = await startGateway({ config: operatedConfig(upstream.url, { metrics: { enabled: false } }) });
    try {
      assert.equal((await fetch(`${gateway.url}/metrics`)).status, 401);
    } finally {
      await gateway.close();
    }
  });
});
