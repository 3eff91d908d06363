import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { CLIENT_ID, CLIENT_SECRET, OPAQUE_RESOURCE, OTHER_RESOURCE, startOidc, type OidcServer } from "../support/oidc.js";
import { assertForwarded, assertNotForwarded, newTag, TAG_HEADER } from "../support/forwarded.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The OpenAI client, through a real gateway process, with oauth2_token
// validating access tokens issued by a real OpenID provider.

describe("the OpenAI client through the gateway with OAuth2 access tokens", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let idp: OidcServer;
  let jwtGateway: GatewayProcess;
  let introspectionGateway: GatewayProcess;
  const tokensUsed: string[] = [];

  /** An `openai` client whose requests carry `tag` (forwarded.ts): a refusal then proves it never reached the upstream. */
  const client = (gateway: GatewayProcess, token: string, tag = newTag().tag) => {
    tokensUsed.push(token);
    return new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: token, maxRetries: 0, timeout: 10_000, defaultHeaders: { [TAG_HEADER]: tag } });
  };

  before(async () => {
    upstream = await startUpstreamProcess();
    idp = await startOidc();
    jwtGateway = await startGateway({
      config: {
        server: {
          auth: {
            provider_config: {
              type: "oauth2_token",
              jwks: { uri: idp.jwksUri, refresh_cooldown_ms: 0 },
              issuer: idp.issuer,
              typ: "at+jwt",
              claims_mapping: { sub: "roles", "resource_access.tollgate.roles": "roles", groups: "teams" },
            },
          },
        },
        upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
        logging: { level: "debug" },
      },
    });
    introspectionGateway = await startGateway({
      config: {
        server: {
          auth: {
            provider_config: {
              type: "oauth2_token",
              introspection: { url: idp.introspectionUrl, client_id: CLIENT_ID, client_secret: CLIENT_SECRET },
              cache_ttl_ms: 0,
            },
          },
        },
        upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
        logging: { level: "debug" },
      },
    });
  });

  after(async () => {
    await jwtGateway?.close();
    await introspectionGateway?.close();
    await idp?.close();
    await upstream?.close();
  });

  test("a JWT access token from the provider lists models, and the upstream sees its subject", async () => {
    const ids: string[] = [];
    for await (const model of client(jwtGateway, await idp.token()).models.list()) ids.push(model.id);
    assert.deepEqual(ids, ["demo-small", "demo-embed"]);
    const seen = await upstream.waitForRequest((r) => r.path === "/v1/models" && r.headers["x-tollgate-principal"] === CLIENT_ID);
    assert.equal(seen.headers.authorization, undefined);
  });

  test("a chat completion works with a JWT access token", async () => {
    const completion = await client(jwtGateway, await idp.token()).chat.completions.create({
      model: "demo-small",
      messages: [{ role: "user", content: "hello oauth" }],
    });
    assert.equal(completion.choices[0]?.message.content, "You said: hello oauth");
  });

  test("a token for another audience is refused with 401 Invalid JWT token", async () => {
    const { tag } = newTag();
    await assert.rejects(client(jwtGateway, await idp.token(OTHER_RESOURCE), tag).models.list(), (err: unknown) => {
      assert.ok(err instanceof OpenAI.AuthenticationError);
      assert.equal(err.status, 401);
      assert.equal(err.message, "401 Invalid JWT token");
      assert.equal(err.code, "invalid_token");
      return true;
    });
    await assertNotForwarded(upstream, tag);
  });

  test("no token at all gets the issuer-naming message", async () => {
    const { tag, headers } = newTag();
    const res = await fetch(`${jwtGateway.url}/v1/models`, { headers });
    assert.equal(res.status, 401);
    await assertNotForwarded(upstream, tag);
    const body = (await res.json()) as { error: { message: string } };
    assert.equal(body.error.message, `Authentication required. Please provide a valid OAuth2 Bearer token from ${idp.issuer}`);
    assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
  });

  test("after a key rotation at the provider, its new tokens work without restarting the gateway", async () => {
    await idp.rotate();
    const completion = await client(jwtGateway, await idp.token()).chat.completions.create({
      model: "demo-small",
      messages: [{ role: "user", content: "rotated" }],
    });
    assert.equal(completion.choices[0]?.message.content, "You said: rotated");
  });

  test("an opaque token is accepted through introspection, and refused once revoked", async () => {
    const token = await idp.token(OPAQUE_RESOURCE);
    const ids: string[] = [];
    const [accepted, revoked] = [newTag().tag, newTag().tag];
    for await (const model of client(introspectionGateway, token, accepted).models.list()) ids.push(model.id);
    assert.equal(ids.length, 2);
    await assertForwarded(upstream, accepted);
    await idp.revoke(token);
    await assert.rejects(client(introspectionGateway, token, revoked).models.list(), (err: unknown) => {
      assert.ok(err instanceof OpenAI.AuthenticationError);
      assert.equal(err.message, "401 Token not active");
      return true;
    });
    await assertNotForwarded(upstream, revoked);
  });

  test("while the provider is down, introspection answers 503", async () => {
    const token = await idp.token(OPAQUE_RESOURCE);
    const { tag } = newTag();
    await idp.stop();
    try {
      await assert.rejects(client(introspectionGateway, token, tag).models.list(), (err: unknown) => {
        assert.ok(err instanceof OpenAI.APIError);
        assert.equal(err.status, 503);
        return true;
      });
    } finally {
      await idp.restart();
    }
    await assertNotForwarded(upstream, tag);
  });

  test("no token ever appears in either gateway's output", () => {
    assert.ok(tokensUsed.length >= 6);
    const output = jwtGateway.stdout() + jwtGateway.stderr() + introspectionGateway.stdout() + introspectionGateway.stderr();
    // The search below means something only if the requests that carried those tokens were logged:
    // each gateway wrote its access line for an accepted and for a refused token.
    const requestLines = (g: GatewayProcess) =>
      g.logLines().filter((l) => l.msg === "request" && l.method === "GET").map((l) => `${l.status} ${l.principal ?? "-"}`);
    for (const g of [jwtGateway, introspectionGateway]) {
      assert.ok(requestLines(g).includes(`200 ${CLIENT_ID}`), requestLines(g).join(", "));
      assert.ok(requestLines(g).includes("401 -"), requestLines(g).join(", "));
    }
    for (const token of tokensUsed) {
      assert.deepEqual(linesContaining(output, token), []);
      for (const part of token.split(".").filter((p) => p.length > 20)) assert.deepEqual(linesContaining(output, part), []);
    }
    assert.deepEqual(linesContaining(output, CLIENT_SECRET), []);
  });
});
