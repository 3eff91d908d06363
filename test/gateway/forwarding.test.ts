import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { VERSION } from "../../src/version.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { linesContaining, rawRequest, startGateway, type GatewayProcess } from "../support/gateway.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// What reaches the upstream. The gateway's upstream.url points at the demo
// upstream's /echo/base route, so every forwarded request comes back as JSON
// describing exactly what the upstream received. Requests use a model read
// (`/v1/models/demo-small`), not a list route: a list answered by something
// that is not a list is refused with 502 (docs/security.md).

const TOKEN = "tok-alice-Hq3Lw0pXe7";
const UPSTREAM_KEY = "sk-upstream-9fQmB2vR";

interface Echo {
  method: string;
  path: string;
  query: string;
  headers: Record<string, string | undefined>;
  body: string;
}

describe("forwarding", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;
  let proxied: GatewayProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice" } } });
    [gateway, proxied] = await Promise.all([
      startGateway({
        config: {
          // Forwarding itself is under test, on any path: no catalog, nothing refused as undeclared.
          server: { auth: { provider_config: { type: "custom", endpoint: auth.url } }, resources: { presets: [], unlisted: "allow" } },
          upstream: { url: `${upstream.url}/echo/base/`, api_key: UPSTREAM_KEY, principal_header: "x-tollgate-principal" },
        },
      }),
      // Behind an authenticating proxy: identity arrives in headers.
      startGateway({
        config: {
          server: {
            auth: { provider_config: { type: "upstream_header", principal_header: "x-user", attributes_header: "x-user-attributes", trusted_proxies: ["127.0.0.1"] } },
            resources: { presets: [], unlisted: "allow" },
          },
          upstream: { url: `${upstream.url}/echo`, principal_header: "x-tollgate-principal" },
        },
      }),
    ]);
  });

  after(async () => {
    await gateway?.close();
    await proxied?.close();
    await auth?.close();
    await upstream?.close();
  });

  async function echo(path: string, init: RequestInit = {}): Promise<Echo> {
    const res = await fetch(`${gateway.url}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${TOKEN}`, ...(init.headers as Record<string, string>) },
    });
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as Echo;
  }

  test("the canonical path goes upstream, under the upstream URL's base path, with the raw query", { timeout: 10_000 }, async () => {
    const seen = await echo("/v1//models/./x/%7Efoo/?b=2&a=%20&a=3");
    assert.equal(seen.path, "/echo/base/v1/models/x/~foo");
    assert.equal(seen.query, "b=2&a=%20&a=3");
  });

  test("the method and the body reach the upstream unchanged", { timeout: 10_000 }, async () => {
    const body = JSON.stringify({ model: "demo-small", note: "ünïcødé ✓", n: 1 });
    const seen = await echo("/v1/things", { method: "PUT", body, headers: { "content-type": "application/json" } });
    assert.equal(seen.method, "PUT");
    assert.equal(seen.body, body);
    assert.equal(seen.headers["content-type"], "application/json");
    assert.equal(seen.headers["content-length"], String(Buffer.byteLength(body)));
  });

  test("a chunked request body (no Content-Length) reaches the upstream whole", { timeout: 10_000 }, async () => {
    const parts = ["first,", "second,", "third"];
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = parts.shift();
        if (next === undefined) controller.close();
        else {
          await new Promise((r) => setTimeout(r, 20));
          controller.enqueue(new TextEncoder().encode(next));
        }
      },
    });
    const seen = await echo("/v1/upload", { method: "POST", body: stream, duplex: "half" } as RequestInit);
    assert.equal(seen.body, "first,second,third");
    // Framing is per hop: chunked, or a Content-Length when the body had fully arrived before it was sent on.
    assert.ok(seen.headers["transfer-encoding"] === "chunked" || seen.headers["content-length"] === "18");
  });

  test("the client's Authorization is replaced by upstream.api_key", { timeout: 10_000 }, async () => {
    const seen = await echo("/v1/models/demo-small");
    assert.equal(seen.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
  });

  test("the principal header carries the authenticated principal; a client-sent one is dropped", { timeout: 10_000 }, async () => {
    const seen = await echo("/v1/models/demo-small", { headers: { "X-Tollgate-Principal": "mallory" } });
    assert.equal(seen.headers["x-tollgate-principal"], "alice");
  });

  test("two spoofed principal headers are both dropped", { timeout: 10_000 }, async () => {
    const { hostname, port } = new URL(gateway.url);
    const res = await rawRequest(
      gateway.url,
      [
        "GET /v1/models/demo-small HTTP/1.1",
        `Host: ${hostname}:${port}`,
        `Authorization: Bearer ${TOKEN}`,
        "x-tollgate-principal: mallory",
        "X-TOLLGATE-PRINCIPAL: root",
        "Connection: close",
        "",
        "",
      ].join("\r\n"),
    );
    assert.equal(res.status, 200);
    assert.equal((JSON.parse(res.body) as Echo).headers["x-tollgate-principal"], "alice");
  });

  test("hop-by-hop headers, and the headers Connection names, are not forwarded", { timeout: 10_000 }, async () => {
    const { hostname, port } = new URL(gateway.url);
    const res = await rawRequest(
      gateway.url,
      [
        "GET /v1/models/demo-small HTTP/1.1",
        `Host: ${hostname}:${port}`,
        `Authorization: Bearer ${TOKEN}`,
        "Connection: keep-alive, X-Secret-Hop",
        "X-Secret-Hop: for-the-gateway-only",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: x-checksum",
        "Upgrade: websocket",
        "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
        "Proxy-Connection: keep-alive",
        "X-Kept: yes",
        "",
        "",
      ].join("\r\n"),
    );
    assert.equal(res.status, 200, res.body);
    const seen = JSON.parse(res.body) as Echo;
    for (const name of ["x-secret-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"]) {
      assert.equal(seen.headers[name], undefined, `${name} was forwarded`);
    }
    assert.equal(seen.headers["x-kept"], "yes");
    // The upstream connection's own Host and Connection, not the client's.
    assert.equal(seen.headers.host, new URL(upstream.url).host);
    assert.notEqual(seen.headers.connection, "keep-alive, X-Secret-Hop");
  });

  test("X-Forwarded-For gains the peer address; X-Forwarded-Proto and -Host are the gateway's", { timeout: 10_000 }, async () => {
    const seen = await echo("/v1/models/demo-small", {
      headers: { "x-forwarded-for": "10.9.9.9", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example", forwarded: "for=1.2.3.4" },
    });
    assert.equal(seen.headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert.equal(seen.headers["x-forwarded-proto"], "http");
    assert.equal(seen.headers["x-forwarded-host"], new URL(gateway.url).host);
    assert.equal(seen.headers.forwarded, undefined);
  });

  test("the upstream's status, headers and body come back to the client", { timeout: 10_000 }, async () => {
    const res = await fetch(`${gateway.url}/v1/anything`, {
      headers: { authorization: `Bearer ${TOKEN}`, "x-demo-status": "429" },
    });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("content-type"), "application/json");
    assert.deepEqual(await res.json(), {
      error: { message: "demo upstream answered 429 as asked", type: "demo_error", param: null, code: "demo_status" },
    });
  });

  test("a public path is forwarded without authentication and without a principal", { timeout: 10_000 }, async () => {
    const { tag, headers } = newTag();
    const res = await fetch(`${gateway.url}/v1/health`, { headers: { ...headers, "x-tollgate-principal": "mallory" } });
    assert.equal(res.status, 200);
    await assertForwarded(upstream, tag);
    const seen = (await res.json()) as Echo;
    assert.equal(seen.path, "/echo/base/v1/health");
    assert.equal(seen.headers["x-tollgate-principal"], undefined);
    assert.equal(seen.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
  });

  test("the client's credential is not forwarded on a public path either", { timeout: 10_000 }, async () => {
    const res = await fetch(`${gateway.url}/v1/version`, { headers: { authorization: "Bearer tok-someone-else" } });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as Echo).headers.authorization, `Bearer ${UPSTREAM_KEY}`);
  });

  test("GET /health and GET /version are answered by the gateway itself", { timeout: 10_000 }, async () => {
    const health = await fetch(`${gateway.url}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "OK" });
    const version = await fetch(`${gateway.url}/version/`);
    assert.deepEqual(await version.json(), { version: VERSION });
    const seen = await upstream.requests();
    assert.ok(!seen.some((r) => r.path === "/echo/base/health" || r.path === "/echo/base/version"));
  });

  test("a path that merely ends in /health is not public", { timeout: 10_000 }, async () => {
    const { tag, headers } = newTag();
    const res = await fetch(`${gateway.url}/x/health`, { headers });
    assert.equal(res.status, 401);
    await assertNotForwarded(upstream, tag);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, "missing_credential");
  });

  test("with upstream_header, the proxy-asserted identity reaches the upstream as the principal", { timeout: 10_000 }, async () => {
    const res = await fetch(`${proxied.url}/v1/models/demo-small`, {
      headers: { "x-user": "bob", "x-user-attributes": '{"roles":["admin"]}', "x-tollgate-principal": "mallory" },
    });
    assert.equal(res.status, 200);
    const seen = (await res.json()) as Echo;
    assert.equal(seen.path, "/echo/v1/models/demo-small");
    assert.equal(seen.headers["x-tollgate-principal"], "bob");
  });

  test("with upstream_header, a request without the identity header is refused with 401", { timeout: 10_000 }, async () => {
    const { tag, headers } = newTag();
    const res = await fetch(`${proxied.url}/v1/models/demo-small`, { headers });
    assert.equal(res.status, 401);
    await assertNotForwarded(upstream, tag);
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate"');
    const body = (await res.json()) as { error: { message: string; type: string; code: string } };
    assert.equal(body.error.type, "authentication_error");
    assert.equal(body.error.code, "missing_credential");
    assert.match(body.error.message, /^Authentication required/);
  });

  test("a refused request is logged with its canonical path and status, never its query or credential", { timeout: 10_000 }, async () => {
    const res = await fetch(`${gateway.url}/v1//refused/./path?secret=query-value`, { headers: { authorization: "Bearer not-a-valid-token-Zx81" } });
    assert.equal(res.status, 401);
    const line = await gateway.waitForLog((l) => l.msg === "request" && l.path === "/v1/refused/path");
    assert.deepEqual([line.method, line.status, line.principal], ["GET", 401, undefined]);
    const output = gateway.stdout() + gateway.stderr();
    assert.deepEqual(linesContaining(output, "query-value"), []);
    assert.deepEqual(linesContaining(output, "not-a-valid-token-Zx81"), []);
  });

  test("each request is logged once with method, canonical path, status and principal, never the token", { timeout: 10_000 }, async () => {
    await echo("/v1//logged/./path?secret=value");
    const line = await gateway.waitForLog((l) => l.msg === "request" && l.path === "/v1/logged/path");
    assert.equal(line.method, "GET");
    assert.equal(line.status, 200);
    assert.equal(line.principal, "alice");
    assert.equal(typeof line.ms, "number");
    const output = gateway.stdout() + gateway.stderr();
    assert.deepEqual(linesContaining(output, TOKEN), []);
    assert.deepEqual(linesContaining(output, UPSTREAM_KEY), []);
    assert.deepEqual(linesContaining(output, "secret=value"), []);
  });
});
