import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { providerConfigSchema } from "../../../src/core/config/schema.js";
import { createOAuth2Provider, type OAuth2Provider, type OAuth2ProviderConfig } from "../../../src/core/providers/oauth2.js";
import { captureLog } from "../../support/log.js";
import { CLIENT_ID, CLIENT_SECRET, OPAQUE_RESOURCE, POST_CLIENT_ID, POST_CLIENT_SECRET, startOidc, type OidcServer } from "../../support/oidc.js";
import { outcomeOf, type Outcome } from "../../support/refusal.js";
import { startScriptedEndpoint } from "../../support/scripted-endpoint.js";

describe("oauth2_token with introspection (RFC 7662)", () => {
  let idp: OidcServer;
  const captured = captureLog();
  const providers: OAuth2Provider[] = [];
  const tokensSeen: string[] = [];
  let clockOffsetMs = 0;
  const now = () => Date.now() + clockOffsetMs;

  function provider(overrides: Record<string, unknown> = {}, introspection: Record<string, unknown> = {}): OAuth2Provider {
    const config = providerConfigSchema.parse({
      type: "oauth2_token",
      cache_ttl_ms: 0,
      ...overrides,
      introspection: { url: idp.introspectionUrl, client_id: CLIENT_ID, client_secret: CLIENT_SECRET, ...introspection },
    }) as OAuth2ProviderConfig;
    const p = createOAuth2Provider(config, { log: captured.log, now });
    providers.push(p);
    return p;
  }

  async function outcome(p: OAuth2Provider, token: string): Promise<Outcome> {
    tokensSeen.push(token);
    return outcomeOf(p, token);
  }

  before(async () => {
    idp = await startOidc();
  });

  after(async () => {
    for (const p of providers) await p.close();
    await idp.close();
  });

  test("an active opaque token is accepted; the principal falls back to client_id and claims map to attributes", async () => {
    const result = await outcome(provider(), await idp.token(OPAQUE_RESOURCE));
    assert.deepEqual(result, { principal: CLIENT_ID, attributes: { teams: ["ml", "research"], namespaces: ["acme"] } });
  });

  test("client_secret_post (send_secret_in_body) works against the provider too", async () => {
    const p = provider({}, { client_id: POST_CLIENT_ID, client_secret: POST_CLIENT_SECRET, send_secret_in_body: true });
    assert.equal((await outcome(p, await idp.token(OPAQUE_RESOURCE)) as { principal: string }).principal, CLIENT_ID);
  });

  test("a revoked token is refused with 401 Token not active", async () => {
    const p = provider();
    const token = await idp.token(OPAQUE_RESOURCE);
    assert.equal("principal" in (await outcome(p, token)), true);
    await idp.revoke(token);
    assert.deepEqual(await outcome(p, token), { status: 401, message: "Token not active" });
  });

  test("a token the provider never issued is not active", async () => {
    assert.deepEqual(await outcome(provider(), "not-a-token-the-provider-knows"), { status: 401, message: "Token not active" });
  });

  test("wrong client credentials make introspection fail with a 401 naming the status", async () => {
    const p = provider({}, { client_secret: "wrong-secret" });
    assert.deepEqual(await outcome(p, await idp.token(OPAQUE_RESOURCE)), { status: 401, message: "Token introspection failed: 401" });
  });

  test("an unreachable provider gives 503, and the next request after it is back succeeds", async () => {
    const p = provider({ timeout_ms: 2000 });
    const token = await idp.token(OPAQUE_RESOURCE);
    await idp.stop();
    try {
      assert.deepEqual(await outcome(p, token), { status: 503, message: "Token introspection service unavailable" });
    } finally {
      await idp.restart();
    }
    assert.equal("principal" in (await outcome(p, token)), true);
  });

  test("with a cache, a revoked token keeps passing only until cache_ttl_ms", async () => {
    const p = provider({ cache_ttl_ms: 10_000 });
    const token = await idp.token(OPAQUE_RESOURCE);
    assert.equal("principal" in (await outcome(p, token)), true);
    await idp.revoke(token);
    assert.equal("principal" in (await outcome(p, token)), true);
    clockOffsetMs = 11_000;
    try {
      assert.deepEqual(await outcome(p, token), { status: 401, message: "Token not active" });
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("with the default config (no cache_ttl_ms), a revoked token is refused on the very next request", async () => {
    const p = provider({ cache_ttl_ms: undefined });
    const token = await idp.token(OPAQUE_RESOURCE);
    assert.equal("principal" in (await outcome(p, token)), true);
    assert.equal("principal" in (await outcome(p, token)), true);
    await idp.revoke(token);
    assert.deepEqual(await outcome(p, token), { status: 401, message: "Token not active" });
  });

  test("200 concurrent checks of one token make one introspection call; another token makes its own", async () => {
    const endpoint = await startScriptedEndpoint((body, _q, res) => {
      const token = new URLSearchParams(body).get("token");
      setTimeout(() => res.writeHead(200).end(JSON.stringify({ active: true, sub: `user-of-${token}` })), 200);
    });
    try {
      const p = provider({ cache_ttl_ms: undefined }, { url: endpoint.url });
      const results = await Promise.all([...Array.from({ length: 200 }, () => outcome(p, "shared-token")), outcome(p, "other-token")]);
      assert.deepEqual(results.slice(0, 200).map((r) => (r as { principal: string }).principal), Array(200).fill("user-of-shared-token"));
      assert.equal((results[200] as { principal: string }).principal, "user-of-other-token");
      assert.equal(endpoint.calls.length, 2);
      // Coalesced, not cached: the next request asks again (the default keeps no answer).
      await outcome(p, "shared-token");
      assert.equal(endpoint.calls.length, 3);
    } finally {
      await endpoint.close();
    }
  });

  test("a caller that hangs up stops waiting, and the others sharing its call still get their answer", async () => {
    const endpoint = await startScriptedEndpoint((_b, _q, res) => setTimeout(() => res.writeHead(200).end(JSON.stringify({ active: true, sub: "u" })), 300));
    try {
      const p = provider({}, { url: endpoint.url });
      const client = new AbortController();
      const leaving = p.authenticate({ token: "t-shared", path: "/v1/models", query: "", headers: {}, signal: client.signal }).then(
        () => 0,
        (e: { status: number }) => e.status,
      );
      const staying = outcome(p, "t-shared");
      setTimeout(() => client.abort(), 50);
      assert.equal(await leaving, 503);
      assert.equal(((await staying) as { principal: string }).principal, "u");
      assert.equal(endpoint.calls.length, 1);
    } finally {
      await endpoint.close();
    }
  });

  test("the endpoint receives the token as a form field and the client by HTTP Basic (form-encoded first)", async () => {
    const endpoint = await startScriptedEndpoint((_b, _q, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: "u1", username: "name1", scope: "a b" })));
    try {
      const p = provider({ claims_mapping: { scope: "scopes" } }, { url: endpoint.url, client_id: "my client", client_secret: "s:ecret" });
      assert.deepEqual(await outcome(p, "opaque-1"), { principal: "u1", attributes: { scopes: ["a", "b"] } });
      assert.equal(endpoint.calls[0]!.body, "token=opaque-1");
      assert.equal(endpoint.calls[0]!.authorization, `Basic ${Buffer.from("my+client:s%3Aecret").toString("base64")}`);
    } finally {
      await endpoint.close();
    }
  });

  test("with send_secret_in_body the client id and secret travel in the form and no Authorization header is sent", async () => {
    const endpoint = await startScriptedEndpoint((_b, _q, res) => res.writeHead(200).end(JSON.stringify({ active: true, username: "only-username" })));
    try {
      const p = provider({}, { url: endpoint.url, client_id: "myclient", client_secret: "abcdefg", send_secret_in_body: true });
      assert.equal((await outcome(p, "opaque-2") as { principal: string }).principal, "only-username");
      assert.deepEqual(Object.fromEntries(new URLSearchParams(endpoint.calls[0]!.body)), { token: "opaque-2", client_id: "myclient", client_secret: "abcdefg" });
      assert.equal(endpoint.calls[0]!.authorization, undefined);
    } finally {
      await endpoint.close();
    }
  });

  test("a 5xx from the endpoint is a 503, as every other provider's outage (the reference says 401)", async () => {
    const endpoint = await startScriptedEndpoint((_b, _q, res) => res.writeHead(500).end("{}"));
    try {
      assert.deepEqual(await outcome(provider({}, { url: endpoint.url }), "opaque-3"), { status: 503, message: "Token introspection service unavailable" });
    } finally {
      await endpoint.close();
    }
  });

  test("a 200 that is not JSON, or an answer over the size limit, is a 503: the token was not judged", async () => {
    const endpoint = await startScriptedEndpoint((body, _q, res) => {
      if (new URLSearchParams(body).get("token") === "huge") res.writeHead(200).end(JSON.stringify({ active: true, sub: "u", pad: "x".repeat(2 * 1024 * 1024) }));
      else res.writeHead(200).end("<html>login</html>");
    });
    try {
      assert.deepEqual(await outcome(provider({}, { url: endpoint.url }), "opaque-4"), { status: 503, message: "Token introspection error" });
      assert.deepEqual(await outcome(provider({}, { url: endpoint.url }), "huge"), { status: 503, message: "Token introspection error" });
    } finally {
      await endpoint.close();
    }
  });

  test("an endpoint slower than timeout_ms gives 503", async () => {
    const endpoint = await startScriptedEndpoint((_b, _q, res) => setTimeout(() => res.writeHead(200).end("{\"active\":true,\"sub\":\"x\"}"), 1500));
    try {
      assert.deepEqual(await outcome(provider({ timeout_ms: 200 }, { url: endpoint.url }), "opaque-5"), { status: 503, message: "Token introspection timeout" });
    } finally {
      await endpoint.close();
    }
  });

  test("active answers are cached, never beyond the token's exp, and inactive ones only briefly", async () => {
    const exp = Math.floor(Date.now() / 1000) + 20;
    const endpoint = await startScriptedEndpoint((body, _q, res) => {
      const token = new URLSearchParams(body).get("token");
      res.writeHead(200).end(JSON.stringify(token === "good" ? { active: true, sub: "u", exp } : { active: false }));
    });
    try {
      const p = provider({ cache_ttl_ms: 60_000 }, { url: endpoint.url });
      for (let i = 0; i < 5; i++) assert.equal("principal" in (await outcome(p, "good")), true);
      for (let i = 0; i < 5; i++) assert.deepEqual(await outcome(p, "dead"), { status: 401, message: "Token not active" });
      assert.equal(endpoint.calls.length, 2);
      clockOffsetMs = 6_000; // past the brief inactive cache, within the active one
      await outcome(p, "good");
      await outcome(p, "dead");
      assert.equal(endpoint.calls.length, 3);
      clockOffsetMs = 21_000; // past exp: asked again, though cache_ttl_ms is longer
      await outcome(p, "good");
      assert.equal(endpoint.calls.length, 4);
    } finally {
      clockOffsetMs = 0;
      await endpoint.close();
    }
  });

  test("the message for a missing token names no host, port or URL (the introspection endpoint is internal)", () => {
    for (const p of [provider(), provider({ issuer: idp.issuer })]) {
      assert.equal(p.authRequiredMessage, "Authentication required. Please provide a valid OAuth2 Bearer token in the Authorization header");
    }
  });

  test("no token or client secret ever appears in the log", () => {
    const text = captured.text();
    assert.ok(text.includes("introspection"));
    for (const secret of [...tokensSeen.filter((t) => t.length > 12), CLIENT_SECRET, POST_CLIENT_SECRET, "abcdefg"]) {
      assert.equal(text.includes(secret), false, "a secret was logged");
    }
  });
});
