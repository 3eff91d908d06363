import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { SignJWT } from "jose";
import { startCustomAuth } from "../support/custom-auth.js";
import { eventually } from "../support/eventually.js";
import { assertForwarded, assertNotForwarded, newTag, TAG_HEADER } from "../support/forwarded.js";
import { distFile, startGateway } from "../support/gateway.js";
import { CLIENT_ID, CLIENT_SECRET, OPAQUE_RESOURCE, startOidc, type OidcServer } from "../support/oidc.js";
import { throwawayRedisOrSkip } from "../support/redis-server.js";
import { closedPort } from "../support/refusal.js";
import { startScriptedEndpoint } from "../support/scripted-endpoint.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Identity providers and /ready tell the truth (issue 14): readiness is
// "answering now", recovery after an outage needs no request, /ready and
// refusal messages name no internal address, introspection fails closed
// with 503 and coalesces concurrent checks, and HS256 pinned with oct keys
// works as in Llama Stack.

interface Readiness {
  status: number;
  text: string;
  body: { status: string; checks: Record<string, string>; failing?: string[] };
}

async function ready(url: string): Promise<Readiness> {
  const res = await fetch(`${url}/ready`);
  const text = await res.text();
  return { status: res.status, text, body: JSON.parse(text) as Readiness["body"] };
}

describe("identity providers and readiness tell the truth", { timeout: 240_000 }, () => {
  let upstream: UpstreamProcess;
  let idp: OidcServer;

  before(async () => {
    upstream = await startUpstreamProcess();
    idp = await startOidc();
  });

  after(async () => {
    await idp?.close();
    await upstream?.close();
  });

  const jwksGateway = (extra: Record<string, unknown> = {}) =>
    startGateway({
      // The default refresh_cooldown_ms (30 s): recovery must not wait for it.
      config: { server: { auth: { provider_config: { type: "oauth2_token", jwks: { uri: idp.jwksUri }, issuer: idp.issuer, ...extra } } }, upstream: { url: upstream.url } },
    });

  test("the JWKS is fetched at start-up and, after it failed, again in the background: recovery is logged with no request at all", async () => {
    await idp.stop();
    const gateway = await jwksGateway();
    try {
      // Logged at start-up, before any request.
      const failure = await gateway.waitForLog((l) => l.msg === "JWKS fetch failed", 5_000);
      assert.equal(failure.reason, "unreachable");
      await new Promise((r) => setTimeout(r, 1_500));
      await idp.restart();
      const upAt = Date.now();
      await gateway.waitForLog((l) => l.msg === "JWKS fetched again: identity provider keys available", 5_000);
      assert.ok(Date.now() - upAt < 5_000);
      assert.equal((await ready(gateway.url)).status, 200);
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${await idp.token()}` } });
      assert.equal(res.status, 200);
    } finally {
      await idp.restart();
      await gateway.close();
    }
  });

  test("JWKS down at start: /ready 503 'unreachable'; once it answers again, /ready is 200 within 5 s (not after the 30 s cooldown)", async () => {
    await idp.stop();
    const gateway = await jwksGateway();
    try {
      const down = await ready(gateway.url);
      assert.equal(down.status, 503);
      assert.deepEqual(down.body, { status: "not ready", checks: { record_store: "ok", identity_provider: "unreachable" }, failing: ["identity_provider"] });
      // Down long enough for the background backoff to have grown, probed as a load balancer would.
      for (let i = 0; i < 8; i++) {
        assert.equal((await ready(gateway.url)).status, 503);
        await new Promise((r) => setTimeout(r, 500));
      }
      await idp.restart();
      const upAt = Date.now();
      await eventually(() => ready(gateway.url), (r) => r.status === 200, { timeoutMs: 5_000, intervalMs: 250 });
      assert.ok(Date.now() - upAt < 5_000, `ready ${Date.now() - upAt} ms after the JWKS answered`);
    } finally {
      await idp.restart();
      await gateway.close();
    }
  });

  test("a JWKS that stops answering makes /ready 503 within seconds, though its keys were loaded; back to 200 when it returns", async () => {
    const gateway = await jwksGateway();
    try {
      await eventually(() => ready(gateway.url), (r) => r.status === 200, { timeoutMs: 5_000, intervalMs: 200 });
      await idp.stop();
      const down = await eventually(() => ready(gateway.url), (r) => r.status === 503, { timeoutMs: 5_000, intervalMs: 250 });
      assert.equal(down.body.checks.identity_provider, "unreachable");
      await idp.restart();
      await eventually(() => ready(gateway.url), (r) => r.status === 200, { timeoutMs: 5_000, intervalMs: 250 });
    } finally {
      await idp.restart();
      await gateway.close();
    }
  });

  test("an introspection endpoint that answered once but stops answering makes /ready 503 (not ready 'once reached')", async () => {
    const gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "oauth2_token", introspection: { url: idp.introspectionUrl, client_id: CLIENT_ID, client_secret: CLIENT_SECRET }, timeout_ms: 1_000 } } },
        upstream: { url: upstream.url },
      },
    });
    try {
      assert.equal((await ready(gateway.url)).status, 200);
      const ok = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${await idp.token(OPAQUE_RESOURCE)}` } });
      assert.equal(ok.status, 200);
      await idp.stop();
      const down = await eventually(() => ready(gateway.url), (r) => r.status === 503, { timeoutMs: 6_000, intervalMs: 250 });
      assert.equal(down.body.checks.identity_provider, "unreachable");
      assert.ok(!down.text.includes(new URL(idp.issuer).port), down.text);
      await idp.restart();
      await eventually(() => ready(gateway.url), (r) => r.status === 200, { timeoutMs: 6_000, intervalMs: 250 });
    } finally {
      await idp.restart();
      await gateway.close();
    }
  });

  test("/ready names no host, port or driver message (a custom endpoint and a quota store down); the log has the detail", async (t) => {
    const port = await closedPort();
    const redis = await throwawayRedisOrSkip(t);
    if (!redis) return;
    await redis.start();
    const redisPort = new URL(redis.url).port;
    const gateway = await startGateway({
      config: {
        server: {
          auth: { provider_config: { type: "custom", endpoint: `http://127.0.0.1:${port}/validate`, timeout_ms: 1000 } },
          quota: { kvstore: { type: "redis", url: redis.url }, failure_mode: "open" },
        },
        upstream: { url: upstream.url },
      },
    });
    try {
      await redis.stop();
      const r = await eventually(() => ready(gateway.url), (x) => x.body.failing?.length === 2, { timeoutMs: 10_000, intervalMs: 250 });
      assert.equal(r.status, 503);
      assert.equal(r.body.checks.identity_provider, "unreachable");
      assert.match(r.body.checks.quota_store!, /^[a-z][a-z0-9_]*$/);
      for (const secret of [String(port), redisPort, "127.0.0.1", "localhost", "ECONNREFUSED", "http"]) assert.ok(!r.text.includes(secret), `${secret} in ${r.text}`);
      // The operator still learns where: the log line names the endpoint's host.
      await gateway.waitForLog((l) => l.msg === "custom readiness probe failed" && l.host === `127.0.0.1:${port}`);
      await gateway.waitForLog((l) => l.msg === "not ready");
    } finally {
      await gateway.close();
      await redis.stop();
    }
  });

  test("custom-auth messages name no host or port: without a credential (401) and with the endpoint down (503)", async () => {
    const auth = await startCustomAuth();
    const authPort = new URL(auth.url).port;
    const gateway = await startGateway({
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url, timeout_ms: 1000 } } }, upstream: { url: upstream.url } },
    });
    try {
      const { tag, headers } = newTag();
      const missing = await fetch(`${gateway.url}/v1/models`, { headers });
      assert.equal(missing.status, 401);
      const text = await missing.text();
      assert.match(text, /Authentication required/);
      assert.ok(!text.includes(authPort) && !text.includes("127.0.0.1"), text);
      await auth.close();
      const down = await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, authorization: "Bearer some-key" } });
      assert.equal(down.status, 503);
      const downText = await down.text();
      assert.ok(!downText.includes(authPort) && !downText.includes("127.0.0.1"), downText);
      await assertNotForwarded(upstream, tag);
    } finally {
      await gateway.close();
      await auth.close();
    }
  });

  test("introspection answering 5xx gives 503 identity_provider_unavailable, as every other provider, and nothing is forwarded", async () => {
    const endpoint = await startScriptedEndpoint((_body, _req, res) => res.writeHead(500, { "content-type": "application/json" }).end("{}"));
    const gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "oauth2_token", introspection: { url: endpoint.url, client_id: "c", client_secret: "s" } } } },
        upstream: { url: upstream.url },
      },
    });
    try {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { ...headers, authorization: "Bearer opaque-token-5xx", "content-type": "application/json" },
        body: JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "hi" }] }),
      });
      assert.equal(res.status, 503);
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "identity_provider_unavailable");
      assert.ok(!body.error.message.includes(new URL(endpoint.url).port));
      assert.equal(endpoint.calls.filter((c) => c.method === "POST").length, 1);
      await assertNotForwarded(upstream, tag);
    } finally {
      await gateway.close();
      await endpoint.close();
    }
  });

  test("200 concurrent requests with one uncached token make one introspection call", async () => {
    const endpoint = await startScriptedEndpoint((body, req, res) => {
      if (req.method !== "POST") return void res.writeHead(405).end();
      const token = new URLSearchParams(body).get("token") ?? "";
      setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: `user-${token.length}` })), 500);
    });
    const gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "oauth2_token", introspection: { url: endpoint.url, client_id: "c", client_secret: "s" } } } },
        upstream: { url: upstream.url },
      },
    });
    try {
      const statuses = await Promise.all(
        Array.from({ length: 200 }, () => fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer one-shared-opaque-token" } }).then(async (r) => (await r.arrayBuffer(), r.status))),
      );
      assert.deepEqual(statuses, Array(200).fill(200));
      // Checks are coalesced in each process: with TOLLGATE_TEST_WORKERS=N, one call per worker at most.
      const processes = Number(process.env.TOLLGATE_TEST_WORKERS ?? 1);
      const calls = endpoint.calls.filter((c) => c.method === "POST").length;
      assert.ok(calls >= 1 && calls <= processes, `${calls} introspection calls from ${processes} process(es)`);
    } finally {
      await gateway.close();
      await endpoint.close();
    }
  });

  test("with the default config a token revoked at the identity provider is refused on the very next request", async () => {
    const gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "oauth2_token", introspection: { url: idp.introspectionUrl, client_id: CLIENT_ID, client_secret: CLIENT_SECRET } } } },
        upstream: { url: upstream.url },
      },
    });
    try {
      const token = await idp.token(OPAQUE_RESOURCE);
      const get = (tag: string) => fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${token}`, [TAG_HEADER]: tag } });
      const [passed, revoked] = [newTag().tag, newTag().tag];
      assert.equal((await get(passed)).status, 200);
      await assertForwarded(upstream, passed);
      await idp.revoke(token);
      const refused = await get(revoked);
      assert.equal(refused.status, 401);
      assert.equal(((await refused.json()) as { error: { message: string } }).error.message, "Token not active");
      await assertNotForwarded(upstream, revoked);
    } finally {
      await gateway.close();
    }
  });

  test("algorithms: [HS256] with an oct key in the JWKS: the gateway accepts the token; HS256 beside RS256 is refused at start-up naming the key", async () => {
    const secret = Buffer.from("foobarbaz-shared-hmac-secret-0123456789");
    const jwks = JSON.stringify({ keys: [{ kid: "1234567890", kty: "oct", alg: "HS256", use: "sig", k: secret.toString("base64") }] });
    const server = http.createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(jwks));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
    const gateway = await startGateway({
      config: { server: { auth: { provider_config: { type: "oauth2_token", jwks: { uri }, algorithms: ["HS256"] } } }, upstream: { url: upstream.url } },
    });
    try {
      const token = await new SignJWT({ sub: "my-user", aud: "llama-stack", groups: ["group1"], exp: Math.floor(Date.now() / 1000) + 300 })
        .setProtectedHeader({ alg: "HS256", kid: "1234567890" })
        .sign(secret);
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200);

      const configFile = join(gateway.dir, "mixed.json");
      writeFileSync(configFile, JSON.stringify({ server: { auth: { provider_config: { type: "oauth2_token", jwks: { uri }, algorithms: ["HS256", "RS256"] } } } }));
      const serve = spawnSync(process.execPath, [distFile("cli/main.js"), "serve", "--config", configFile, "--port", "0"], { encoding: "utf8", timeout: 20_000 });
      assert.notEqual(serve.status, 0);
      assert.match(serve.stderr, /server\.auth\.provider_config\.algorithms: HMAC algorithms \(HS256, HS384, HS512\) cannot be mixed with asymmetric ones/);
    } finally {
      await gateway.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
