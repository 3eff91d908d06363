import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseConfig } from "../../src/core/config/load.js";
import { ConfigError } from "../../src/core/errors.js";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import { assertForwarded, newTag } from "../support/forwarded.js";
import { REPO, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "../support/otlp-receiver.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { clearOfWindowEnd } from "../support/windows.js";

// DESIGN.md "Tracing" end to end: `tollgate serve` processes exporting to a
// real OTLP/HTTP receiver on loopback (test/support/otlp-receiver.ts), the
// demo upstream behind them recording the traceparent it was sent.

const UPSTREAM_KEY = "sk-upstream-secret-0f9e8d7c";
/** Exports every 100 ms instead of 5 s, and gives up an export after 1 s (OpenTelemetry's own variables). */
const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: "100", OTEL_EXPORTER_OTLP_TIMEOUT: "1000" };

const SERVER = 2;
const CLIENT = 3;
const ERROR = 2;

/** A W3C traceparent with fresh ids, sampled. */
function clientTraceparent(): { traceId: string; spanId: string; header: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, header: `00-${traceId}-${spanId}-01` };
}

/** The spans of one trace, once its server span has arrived. */
async function traceOf(receiver: OtlpReceiver, traceId: string): Promise<{ server: ReceivedSpan; children: ReceivedSpan[] }> {
  const spans = await receiver.waitFor((all) => all.some((s) => s.traceId === traceId && s.kind === SERVER));
  // Children end before their parent and are exported in the same or an earlier batch.
  const mine = spans.filter((s) => s.traceId === traceId);
  const servers = mine.filter((s) => s.kind === SERVER);
  assert.equal(servers.length, 1, "one server span per request");
  return { server: servers[0]!, children: mine.filter((s) => s.kind !== SERVER) };
}

/** A loopback port that was just free: nothing listens there. */
async function closedPort(): Promise<number> {
  const probe = http.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => probe.once("listening", r));
  const { port } = probe.address() as AddressInfo;
  await new Promise((r) => probe.close(r));
  return port;
}

/** Every .ts file under `dir`. */
function listSources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? listSources(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : [],
  );
}

function parseTraceparent(value: unknown): { traceId: string; parentId: string; flags: string } {
  const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(String(value));
  assert.ok(match, `a W3C traceparent: ${String(value)}`);
  return { traceId: match[1]!, parentId: match[2]!, flags: match[3]! };
}

describe("tracing: OTLP/HTTP export of each request's spans", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let receiver: OtlpReceiver;
  let gateway: GatewayProcess;
  let dir: string;
  let aliceKey: string;
  let limitedKey: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "tollgate-tracing-"));
    const storage = { type: "sqlite", db_path: join(dir, "records.db") };
    const records = await openRecordStore(storage as never);
    ({ key: aliceKey } = await createApiKey(records, { principal: "alice", attributes: { roles: ["user"] } }));
    ({ key: limitedKey } = await createApiKey(records, { principal: "bob", attributes: { roles: ["user"] }, limits: [{ requests: 1, period: "hour" }] }));
    await records.close();
    [upstream, receiver] = await Promise.all([startUpstreamProcess(), startOtlpReceiver()]);
    gateway = await startGateway({
      config: {
        server: {
          host: "127.0.0.1",
          auth: {
            provider_config: { type: "api_key" },
            route_policy: [{ forbid: { paths: ["/v1/embeddings*"] } }, { permit: { paths: "*" } }],
          },
        },
        upstream: { url: upstream.url, api_key: UPSTREAM_KEY },
        storage,
        tracing: { otlp_endpoint: receiver.url, service_name: "tollgate-test" },
      },
      env: FAST_EXPORT,
    });
  });

  after(async () => {
    await gateway?.close();
    await Promise.all([upstream?.close(), receiver?.close()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("a chat completion is one trace: the server span and its stages' children, with the DESIGN.md attributes", async () => {
    const tagged = newTag();
    const res = await fetch(`${gateway.url}/v1/chat/completions?api-version=2&key=${aliceKey}`, {
      method: "POST",
      headers: { ...tagged.headers, authorization: `Bearer ${aliceKey}`, "content-type": "application/json", cookie: "session=cookie-secret-1" },
      body: JSON.stringify({ model: "demo-model", messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(res.status, 200, await res.text());
    const [seen] = await assertForwarded(upstream, tagged.tag);
    const sent = parseTraceparent(seen!.headers.traceparent);
    assert.equal(sent.flags, "01");

    const { server, children } = await traceOf(receiver, sent.traceId);
    assert.equal(server.service, "tollgate-test");
    assert.equal(server.parentSpanId, "", "no client traceparent: the server span is the root");
    assert.equal(server.name, "POST chat");
    assert.deepEqual(
      {
        method: server.attributes["http.request.method"],
        status: server.attributes["http.response.status_code"],
        model: server.attributes["gen_ai.request.model"],
        group: server.attributes["tollgate.route_group"],
        decision: server.attributes["tollgate.decision"],
        path: server.attributes["url.path"],
      },
      { method: "POST", status: 200, model: "demo-model", group: "chat", decision: "allow", path: "/v1/chat/completions" },
    );
    assert.deepEqual(children.map((s) => s.name).sort(), ["authenticate", "quota", "resource_policy", "route_policy", "upstream"].sort());
    for (const child of children) assert.equal(child.parentSpanId, server.spanId, `${child.name} is a child of the server span`);
    const upstreamSpan = children.find((s) => s.name === "upstream")!;
    assert.equal(upstreamSpan.kind, CLIENT);
    assert.equal(upstreamSpan.attributes["http.response.status_code"], 200);
    assert.equal(upstreamSpan.attributes["server.address"], "127.0.0.1");
    // The upstream's traceparent names the gateway's upstream span as its parent.
    assert.equal(sent.parentId, upstreamSpan.spanId);
  });

  test("a client's traceparent and tracestate are continued: same trace, the client's span as parent", async () => {
    const client = clientTraceparent();
    const tagged = newTag();
    const res = await fetch(`${gateway.url}/v1/models`, {
      headers: { ...tagged.headers, authorization: `Bearer ${aliceKey}`, traceparent: client.header, tracestate: "vendor=abc" },
    });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const [seen] = await assertForwarded(upstream, tagged.tag);
    const sent = parseTraceparent(seen!.headers.traceparent);
    assert.equal(sent.traceId, client.traceId);
    assert.notEqual(sent.parentId, client.spanId, "the upstream's parent is the gateway's span, not the client's");
    assert.equal(seen!.headers.tracestate, "vendor=abc");

    const { server, children } = await traceOf(receiver, client.traceId);
    assert.equal(server.parentSpanId, client.spanId);
    assert.equal(server.name, "GET models");
    assert.equal(sent.parentId, children.find((s) => s.name === "upstream")?.spanId);
  });

  test("a refused request has its span too: 401 with the refusal's code, no upstream span", async () => {
    for (const [authorization, code] of [
      [undefined, "missing_credential"],
      ["Bearer not-a-key-1234567890", "invalid_token"],
    ] as const) {
      const client = clientTraceparent();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { traceparent: client.header, ...(authorization ? { authorization } : {}) } });
      assert.equal(res.status, 401);
      await res.arrayBuffer();
      const { server, children } = await traceOf(receiver, client.traceId);
      assert.equal(server.attributes["http.response.status_code"], 401);
      assert.equal(server.attributes["tollgate.decision"], code);
      assert.equal(server.status, 0, "a 4xx is not a server error");
      if (authorization) {
        const auth = children.find((s) => s.name === "authenticate");
        assert.equal(auth?.status, ERROR);
        assert.equal(auth?.attributes["error.type"], code);
      }
      assert.ok(!children.some((s) => s.name === "upstream" || s.name === "route_policy"), children.map((s) => s.name).join());
    }
  });

  test("a request the route policy denies: 403 route_denied, on the route_policy span as well", async () => {
    const client = clientTraceparent();
    const res = await fetch(`${gateway.url}/v1/embeddings`, {
      method: "POST",
      headers: { traceparent: client.header, authorization: `Bearer ${aliceKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "demo-model", input: "x" }),
    });
    assert.equal(res.status, 403);
    await res.arrayBuffer();
    const { server, children } = await traceOf(receiver, client.traceId);
    assert.equal(server.attributes["http.response.status_code"], 403);
    assert.equal(server.attributes["tollgate.decision"], "route_denied");
    const policy = children.find((s) => s.name === "route_policy");
    assert.equal(policy?.attributes["error.type"], "route_denied");
    assert.ok(!children.some((s) => s.name === "upstream"));
  });

  test("a request over its quota: 429 rate_limit_exceeded, on the quota span as well", async () => {
    await clearOfWindowEnd("hour", 30_000);
    const first = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${limitedKey}` } });
    assert.equal(first.status, 200);
    await first.arrayBuffer();
    const client = clientTraceparent();
    const res = await fetch(`${gateway.url}/v1/models`, { headers: { traceparent: client.header, authorization: `Bearer ${limitedKey}` } });
    assert.equal(res.status, 429);
    const { error } = (await res.json()) as { error: { code: string } };
    const { server, children } = await traceOf(receiver, client.traceId);
    assert.equal(server.attributes["http.response.status_code"], 429);
    assert.equal(server.attributes["tollgate.decision"], error.code);
    assert.equal(children.find((s) => s.name === "quota")?.attributes["error.type"], error.code);
    assert.ok(!children.some((s) => s.name === "upstream"));
  });

  test("an undeclared route: 404 route_not_found, refused before the upstream", async () => {
    const client = clientTraceparent();
    const res = await fetch(`${gateway.url}/v1/no-such-route`, { headers: { traceparent: client.header, authorization: `Bearer ${aliceKey}` } });
    assert.equal(res.status, 404);
    await res.arrayBuffer();
    const { server, children } = await traceOf(receiver, client.traceId);
    assert.equal(server.attributes["http.response.status_code"], 404);
    assert.equal(server.attributes["tollgate.decision"], "route_not_found");
    assert.equal(server.attributes["url.path"], "/v1/no-such-route");
    assert.equal(children.find((s) => s.name === "route_policy")?.attributes["error.type"], "route_not_found");
    assert.ok(!children.some((s) => s.name === "upstream"));
  });

  test("a model the upstream does not have: its 404 relayed, decision allow, the upstream span failed", async () => {
    const client = clientTraceparent();
    const res = await fetch(`${gateway.url}/v1/models/no-such-model`, { headers: { traceparent: client.header, authorization: `Bearer ${aliceKey}` } });
    assert.equal(res.status, 404);
    await res.arrayBuffer();
    const { server, children } = await traceOf(receiver, client.traceId);
    assert.equal(server.attributes["tollgate.decision"], "allow");
    assert.equal(server.attributes["url.path"], "/v1/models/no-such-model");
    const upstreamSpan = children.find((s) => s.name === "upstream");
    assert.equal(upstreamSpan?.attributes["http.response.status_code"], 404);
    assert.equal(upstreamSpan?.status, ERROR);
  });

  test("no exported byte holds a credential: the API key, the upstream's key, a cookie, the query string", async () => {
    // After the tests above (node:test runs them in order): every request they sent is in the bodies.
    await receiver.waitFor((spans) => spans.length >= 10);
    const everything = Buffer.concat(receiver.bodies).toString("latin1");
    assert.ok(everything.length > 0);
    for (const secret of [aliceKey, limitedKey, UPSTREAM_KEY, "not-a-key-1234567890", "cookie-secret-1", "api-version", "Bearer"]) {
      assert.ok(!everything.includes(secret), `an exported span holds ${secret}`);
    }
    assert.deepEqual(receiver.strays, []);
  });
});

describe("tracing: sampling, shutdown, reload and a collector that is down", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let receiver: OtlpReceiver;
  const gateways: GatewayProcess[] = [];

  before(async () => {
    [upstream, receiver] = await Promise.all([startUpstreamProcess(), startOtlpReceiver()]);
  });
  after(async () => {
    for (const g of gateways) await g.close();
    await Promise.all([upstream?.close(), receiver?.close()]);
  });

  async function gatewayWith(tracing: Record<string, unknown> | undefined, env: Record<string, string> = FAST_EXPORT): Promise<GatewayProcess> {
    const g = await startGateway({ config: { server: { host: "127.0.0.1" }, upstream: { url: upstream.url }, ...(tracing ? { tracing } : {}) }, env });
    gateways.push(g);
    return g;
  }

  async function forwardedTraceparent(g: GatewayProcess, headers: Record<string, string> = {}): Promise<ReturnType<typeof parseTraceparent>> {
    const tagged = newTag();
    const res = await fetch(`${g.url}/v1/models`, { headers: { ...tagged.headers, ...headers } });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const [seen] = await assertForwarded(upstream, tagged.tag);
    return parseTraceparent(seen!.headers.traceparent);
  }

  test("sample_ratio 0 exports nothing; the upstream still gets a traceparent, not sampled", async () => {
    const g = await gatewayWith({ otlp_endpoint: receiver.url, service_name: "unsampled", sample_ratio: 0 });
    const sent = [];
    for (let i = 0; i < 5; i++) sent.push(await forwardedTraceparent(g));
    assert.ok(sent.every((t) => t.flags === "00"));
    // Stopping flushes whatever is pending: nothing was.
    assert.equal(await g.stop("SIGTERM"), 0);
    assert.deepEqual(receiver.spans().filter((s) => s.service === "unsampled"), []);
  });

  test("SIGTERM exports the spans still waiting for their batch", async () => {
    // A batch every 60 s: only the shutdown can have sent it.
    const g = await gatewayWith({ otlp_endpoint: receiver.url, service_name: "flushed" }, { OTEL_BSP_SCHEDULE_DELAY: "60000" });
    const sent = await forwardedTraceparent(g);
    assert.deepEqual(receiver.spans().filter((s) => s.service === "flushed"), []);
    assert.equal(await g.stop("SIGTERM"), 0);
    const spans = receiver.spans().filter((s) => s.service === "flushed" && s.traceId === sent.traceId);
    assert.deepEqual(spans.map((s) => s.name).sort(), ["GET models", "route_policy", "upstream"]);
  });

  test("without tracing, a client's traceparent and tracestate pass upstream untouched", async () => {
    const g = await gatewayWith(undefined);
    const client = clientTraceparent();
    const tagged = newTag();
    const res = await fetch(`${g.url}/v1/models`, { headers: { ...tagged.headers, traceparent: client.header, tracestate: "vendor=abc" } });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const [seen] = await assertForwarded(upstream, tagged.tag);
    assert.equal(seen!.headers.traceparent, client.header);
    assert.equal(seen!.headers.tracestate, "vendor=abc");
  });

  test("a reload that adds tracing applies to the next requests", async () => {
    const g = await gatewayWith(undefined);
    const client = clientTraceparent();
    writeFileSync(
      join(g.dir, "tollgate.yaml"),
      JSON.stringify({ server: { host: "127.0.0.1" }, upstream: { url: upstream.url }, tracing: { otlp_endpoint: receiver.url, service_name: "reloaded" } }),
    );
    g.child.kill("SIGHUP");
    await g.waitForLog((l) => l.msg === "configuration reloaded");
    const sent = await forwardedTraceparent(g, { traceparent: client.header });
    assert.equal(sent.traceId, client.traceId);
    assert.notEqual(sent.parentId, client.spanId, "the gateway's own span is the upstream's parent now");
    const spans = await receiver.waitFor((all) => all.some((s) => s.service === "reloaded" && s.traceId === client.traceId && s.kind === SERVER));
    assert.ok(spans.some((s) => s.service === "reloaded" && s.name === "upstream"));
  });

  test("several upstreams: an upstream that fails before answering and the one retried are two upstream spans, each naming its upstream", async () => {
    // The first upstream refuses every connection.
    const port = await closedPort();
    const g = await startGateway({
      config: {
        server: { host: "127.0.0.1" },
        upstreams: [
          { name: "down", url: `http://127.0.0.1:${port}`, models: ["m-traced"] },
          { name: "up", url: upstream.url, models: ["m-traced"] },
        ],
        tracing: { otlp_endpoint: receiver.url, service_name: "routed" },
      },
      env: FAST_EXPORT,
    });
    gateways.push(g);
    const tagged = newTag();
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: "POST",
      headers: { ...tagged.headers, "content-type": "application/json" },
      body: JSON.stringify({ model: "m-traced", messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(res.status, 200, await res.text());
    const [seen] = await assertForwarded(upstream, tagged.tag);
    const sent = parseTraceparent(seen!.headers.traceparent);
    const { server, children } = await traceOf(receiver, sent.traceId);
    assert.equal(server.attributes["gen_ai.request.model"], "m-traced", "read to route it, authentication off");
    const calls = children.filter((s) => s.name === "upstream");
    assert.deepEqual(calls.map((s) => s.attributes["tollgate.upstream"]).sort(), ["down", "up"]);
    const down = calls.find((s) => s.attributes["tollgate.upstream"] === "down")!;
    const up = calls.find((s) => s.attributes["tollgate.upstream"] === "up")!;
    assert.equal(down.status, ERROR);
    assert.equal(down.attributes["error.type"], "bad_gateway");
    assert.equal(up.attributes["http.response.status_code"], 200);
    assert.equal(sent.parentId, up.spanId, "the upstream that answered names its own span as parent");
  });

  test("a collector that is down fails no request; the dropped spans are counted and logged once", async () => {
    const port = await closedPort();
    const g = await gatewayWith({ otlp_endpoint: `http://127.0.0.1:${port}` });
    const statuses = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const res = await fetch(`${g.url}/v1/models`);
        await res.arrayBuffer();
        return res.status;
      }),
    );
    assert.deepEqual(new Set(statuses), new Set([200]));
    await g.waitForLog((l) => l.msg === "trace export failed: spans are dropped until the collector answers", 15_000);
    const metrics = await (await fetch(`${g.url}/metrics`)).text();
    const dropped = /^tollgate_trace_spans_dropped_total\{reason="export_failed"\} (\d+)/m.exec(metrics);
    assert.ok(dropped && Number(dropped[1]) > 0, metrics.split("\n").filter((l) => l.includes("trace")).join("\n"));
    // Still answering, and the outage was logged once (by each process exporting: TOLLGATE_TEST_WORKERS runs several).
    assert.equal((await fetch(`${g.url}/v1/models`)).status, 200);
    const logged = g.logLines().filter((l) => String(l.msg).startsWith("trace export failed"));
    assert.equal(new Set(logged.map((l) => l.pid)).size, logged.length, "one line per process");
  });
});

describe("tracing: the config section", () => {
  test("OpenTelemetry is loaded only when tracing is configured: one module imports it, and only start.ts imports that one, lazily", () => {
    const sources = listSources(join(REPO, "src"));
    const importers = sources.filter((file) => /from "@opentelemetry\//.test(readFileSync(file, "utf8"))).map((file) => relative(REPO, file));
    assert.deepEqual(importers, ["src/core/tracing/otel.ts"]);
    const otelImporters = sources.filter((file) => /["']\.\/otel\.js["']|tracing\/otel\.js["']/.test(readFileSync(file, "utf8").replace(/import type [^;]+;/g, ""))).map((file) => relative(REPO, file));
    assert.deepEqual(otelImporters, ["src/core/tracing/start.ts"]);
    assert.match(readFileSync(join(REPO, "src/core/tracing/start.ts"), "utf8"), /await import\("\.\/otel\.js"\)/);
  });

  const parse = (tracing: unknown) => parseConfig(JSON.stringify({ tracing }), "t.yaml", {});
  const problems = (tracing: unknown): string[] => {
    try {
      parse(tracing);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return [...err.issues];
    }
    assert.fail("the config was accepted");
  };

  test("docs/tracing.md's YAML examples are valid configs", () => {
    const doc = readFileSync(join(REPO, "docs/tracing.md"), "utf8");
    const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    assert.ok(blocks.length >= 2);
    for (const block of blocks) assert.ok(parseConfig(block, "docs/tracing.md", {}).tracing, block);
  });

  test("defaults: service_name tollgate, sample_ratio 1; absent, no tracing", () => {
    assert.deepEqual(parse({ otlp_endpoint: "http://collector:4318" }).tracing, { otlp_endpoint: "http://collector:4318", service_name: "tollgate", sample_ratio: 1 });
    assert.equal(parseConfig("{}", "t.yaml", {}).tracing, undefined);
  });

  test("bad values are refused with their path", () => {
    assert.match(problems({}).join("\n"), /^tracing\.otlp_endpoint: /m);
    assert.match(problems({ otlp_endpoint: "collector:4318" }).join("\n"), /^tracing\.otlp_endpoint: expected an http:\/\/ or https:\/\/ URL/m);
    assert.match(problems({ otlp_endpoint: "http://c:4318", sample_ratio: 1.5 }).join("\n"), /^tracing\.sample_ratio: /m);
    assert.match(problems({ otlp_endpoint: "http://c:4318", sample_ratio: -0.1 }).join("\n"), /^tracing\.sample_ratio: /m);
    assert.match(problems({ otlp_endpoint: "http://c:4318", service_name: "" }).join("\n"), /^tracing\.service_name: /m);
    assert.match(problems({ otlp_endpoint: "http://c:4318", endpoint: "x" }).join("\n"), /tracing.*endpoint/m);
  });
});
