import assert from "node:assert/strict";
import { createHmac, createPublicKey } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { SignJWT } from "jose";
import { providerConfigSchema } from "../../../src/core/config/schema.js";
import { ConfigError } from "../../../src/core/errors.js";
import { parseConfig } from "../../../src/core/config/load.js";
import { createOAuth2Provider, type OAuth2Provider, type OAuth2ProviderConfig } from "../../../src/core/providers/oauth2.js";
import { captureLog } from "../../support/log.js";
import { newSigningKey, OTHER_RESOURCE, startOidc, type OidcServer } from "../../support/oidc.js";
import { outcomeOf, type Outcome } from "../../support/refusal.js";

const b64url = (value: unknown) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

describe("oauth2_token with jwks, against a real OpenID provider", () => {
  let idp: OidcServer;
  const captured = captureLog();
  const providers: OAuth2Provider[] = [];
  const tokensSeen: string[] = [];
  let clockOffsetMs = 0;
  const now = () => Date.now() + clockOffsetMs;

  function provider(overrides: Omit<Partial<OAuth2ProviderConfig>, "jwks"> & { jwks?: Partial<NonNullable<OAuth2ProviderConfig["jwks"]>> } = {}): OAuth2Provider {
    const { jwks, ...rest } = overrides;
    const config = providerConfigSchema.parse({
      type: "oauth2_token",
      issuer: idp.issuer,
      ...rest,
      jwks: { uri: idp.jwksUri, refresh_cooldown_ms: 0, ...jwks },
    }) as OAuth2ProviderConfig;
    const p = createOAuth2Provider(config, { log: captured.log, now });
    providers.push(p);
    return p;
  }

  async function outcome(p: OAuth2Provider, token: string): Promise<Outcome> {
    tokensSeen.push(token);
    return outcomeOf(p, token);
  }

  /** A token signed with the provider's own current key, with the claims given. */
  async function signedByIdp(claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
    const key = idp.keys[0]!;
    const nowSec = Math.floor(Date.now() / 1000);
    return new SignJWT({ sub: "forged-user", aud: "llama-stack", iss: idp.issuer, iat: nowSec, exp: nowSec + 300, ...claims })
      .setProtectedHeader({ alg: "RS256", kid: key.kid, typ: "at+jwt", ...header })
      .sign(key.privateKey);
  }

  before(async () => {
    idp = await startOidc();
  });

  after(async () => {
    for (const p of providers) await p.close();
    await idp.close();
  });

  test("a valid access token from the provider is accepted, with Llama Stack's default claims mapping", async () => {
    const result = await outcome(provider(), await idp.token());
    assert.deepEqual(result, {
      principal: "tollgate-test-client",
      attributes: { roles: ["tollgate-test-client"], teams: ["ml", "research"], namespaces: ["acme"] },
    });
  });

  test("Keycloak-style nested roles are reached with a dot path, and space-separated scope claims are split", async () => {
    const p = provider({ claims_mapping: { "resource_access.tollgate.roles": "roles", scope: "scopes" } });
    const result = await outcome(p, await idp.token());
    assert.deepEqual(result, {
      principal: "tollgate-test-client",
      attributes: { roles: ["admin", "user"], scopes: ["models:read", "chat:write"] },
    });
  });

  test("an expired token is refused with 401 Invalid JWT token", async () => {
    const p = provider({ cache_ttl_ms: 0 });
    const token = await idp.token();
    assert.equal("principal" in (await outcome(p, token)), true);
    clockOffsetMs = (idp.tokenTtl + 5) * 1000;
    try {
      assert.deepEqual(await outcome(p, token), { status: 401, message: "Invalid JWT token" });
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("leeway accepts a token that expired within it", async () => {
    const p = provider({ leeway: 60, cache_ttl_ms: 0 });
    const token = await idp.token();
    clockOffsetMs = (idp.tokenTtl + 5) * 1000;
    try {
      assert.equal((await outcome(p, token) as { principal: string }).principal, "tollgate-test-client");
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("a cached verification never outlives the token's exp", async () => {
    const p = provider({ cache_ttl_ms: 3_600_000 });
    const token = await idp.token();
    assert.equal("principal" in (await outcome(p, token)), true);
    clockOffsetMs = (idp.tokenTtl + 1) * 1000;
    try {
      assert.deepEqual(await outcome(p, token), { status: 401, message: "Invalid JWT token" });
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("a token issued for another audience is refused", async () => {
    assert.deepEqual(await outcome(provider(), await idp.token(OTHER_RESOURCE)), { status: 401, message: "Invalid JWT token" });
  });

  test("the audience defaults to llama-stack, as in the reference, and can be set", async () => {
    const other = await idp.token(OTHER_RESOURCE);
    assert.equal((await outcome(provider({ audience: "other-service" }), other) as { principal: string }).principal, "tollgate-test-client");
    assert.deepEqual(await outcome(provider({ audience: "other-service" }), await idp.token()), { status: 401, message: "Invalid JWT token" });
  });

  test("a token signed with the provider's key but naming another issuer is refused", async () => {
    const token = await signedByIdp({ iss: "https://evil.example" });
    assert.deepEqual(await outcome(provider(), token), { status: 401, message: "Invalid JWT token" });
    // The same construction with the right issuer passes: only the issuer made the difference.
    assert.equal((await outcome(provider(), await signedByIdp({}))  as { principal: string }).principal, "forged-user");
  });

  test("a token whose payload was tampered with is refused", async () => {
    const [header, payload, signature] = (await idp.token()).split(".");
    const claims = JSON.parse(Buffer.from(payload!, "base64url").toString()) as Record<string, unknown>;
    const tampered = `${header}.${b64url({ ...claims, sub: "admin", resource_access: { tollgate: { roles: ["root"] } } })}.${signature}`;
    assert.deepEqual(await outcome(provider(), tampered), { status: 401, message: "Invalid JWT token" });
  });

  test("an unsigned token (alg: none) is refused without fetching keys", async () => {
    const p = provider();
    await outcome(p, await idp.token()); // keys loaded
    const fetches = idp.jwksFetches;
    const nowSec = Math.floor(Date.now() / 1000);
    const none = `${b64url({ alg: "none", typ: "at+jwt", kid: idp.keys[0]!.kid })}.${b64url({ sub: "admin", aud: "llama-stack", iss: idp.issuer, exp: nowSec + 300 })}.`;
    assert.deepEqual(await outcome(p, none), { status: 401, message: "Invalid JWT token" });
    assert.equal(idp.jwksFetches, fetches);
  });

  test("an HS256 token signed with the provider's public key as the HMAC secret is refused", async () => {
    const key = idp.keys[0]!;
    const publicPem = createPublicKey(key.privateKey).export({ format: "pem", type: "spki" });
    const nowSec = Math.floor(Date.now() / 1000);
    const input = `${b64url({ alg: "HS256", typ: "at+jwt", kid: key.kid })}.${b64url({ sub: "admin", aud: "llama-stack", iss: idp.issuer, exp: nowSec + 300 })}`;
    for (const secret of [publicPem, JSON.stringify(key.publicJwk), String(key.publicJwk.n)]) {
      const token = `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
      assert.deepEqual(await outcome(provider(), token), { status: 401, message: "Invalid JWT token" });
    }
  });

  test("none cannot be configured, and HMAC algorithms only alone: HS256 beside RS256 is refused naming algorithms", () => {
    const issuesOf = (algorithms: string[]) => {
      try {
        parseConfig(JSON.stringify({ server: { auth: { provider_config: { type: "oauth2_token", jwks: { uri: idp.jwksUri }, algorithms } } } }));
        return [];
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        return err.issues.map((i) => i.replace(/ \(line \d+\)$/, ""));
      }
    };
    assert.ok(issuesOf(["none"]).some((i) => i.startsWith("server.auth.provider_config.algorithms[0]")));
    assert.deepEqual(issuesOf(["HS256", "RS256"]), [
      "server.auth.provider_config.algorithms: HMAC algorithms (HS256, HS384, HS512) cannot be mixed with asymmetric ones; pin one kind",
    ]);
    assert.deepEqual(issuesOf(["HS256", "HS512"]), []);
    assert.deepEqual(issuesOf(["RS256", "ES256"]), []);
  });

  test("with algorithms: [HS256], a token signed with an oct key of the JWKS is accepted, as in Llama Stack; the key type is checked both ways", async () => {
    const secret = Buffer.from("foobarbaz-a-longer-shared-secret-0123456789");
    const rsa = idp.keys[0]!;
    // `k` in plain base64, as Llama Stack's own test writes it; python-jose reads both forms.
    const jwks = JSON.stringify({ keys: [{ kid: "hmac-1", kty: "oct", alg: "HS256", use: "sig", k: secret.toString("base64") }, rsa.publicJwk] });
    const server = http.createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(jwks));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
      const nowSec = Math.floor(Date.now() / 1000);
      const claims = { sub: "my-user", aud: "llama-stack", iss: idp.issuer, exp: nowSec + 300, groups: ["group1"] };
      const hs = (kid: string) => new SignJWT(claims).setProtectedHeader({ alg: "HS256", kid }).sign(secret);
      const rs = (kid: string) => new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid }).sign(rsa.privateKey);

      const hmac = provider({ algorithms: ["HS256"], jwks: { uri } });
      assert.deepEqual(await outcome(hmac, await hs("hmac-1")), { principal: "my-user", attributes: { roles: ["my-user"], teams: ["group1"] } });
      // An RS256 token is not in the allow-list, whatever key it names.
      assert.deepEqual(await outcome(hmac, await rs(rsa.kid)), { status: 401, message: "Invalid JWT token" });
      // An HS256 token naming the RSA key: only oct keys verify HMAC, so no key is found.
      assert.deepEqual(await outcome(hmac, await hs(rsa.kid)), { status: 401, message: "Invalid JWT token" });

      // The default (asymmetric) config never uses the oct key, even for a token naming it with an allowed algorithm.
      const asymmetric = provider({ jwks: { uri } });
      assert.deepEqual(await outcome(asymmetric, await hs("hmac-1")), { status: 401, message: "Invalid JWT token" });
      assert.deepEqual(await outcome(asymmetric, await rs("hmac-1")), { status: 401, message: "Invalid JWT token" });
      assert.equal((await outcome(asymmetric, await rs(rsa.kid)) as { principal: string }).principal, "my-user");
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test("the config needs exactly one of jwks or introspection, and refuses empty claims_mapping values, as the reference", () => {
    const issuesOf = (providerConfig: Record<string, unknown>) => {
      try {
        parseConfig(JSON.stringify({ server: { auth: { provider_config: { type: "oauth2_token", ...providerConfig } } } }));
        return [];
      } catch (err) {
        return (err as ConfigError).issues.map((i) => i.replace(/ \(line \d+\)$/, ""));
      }
    };
    assert.deepEqual(issuesOf({}), ["server.auth.provider_config.jwks: One of jwks or introspection must be configured"]);
    assert.deepEqual(issuesOf({ jwks: { uri: idp.jwksUri }, introspection: { url: idp.introspectionUrl, client_id: "a", client_secret: "b" } }), [
      "server.auth.provider_config.introspection: At present only one of jwks or introspection should be configured",
    ]);
    assert.deepEqual(issuesOf({ jwks: { uri: idp.jwksUri }, claims_mapping: { sub: "" } }), [
      "server.auth.provider_config.claims_mapping.sub: claims_mapping value cannot be empty",
    ]);
    assert.deepEqual(issuesOf({ jwks: { uri: idp.jwksUri } }), []);
  });

  test("Llama Stack's older form, provider_type: oauth2_token with config, is accepted unchanged", () => {
    const config = parseConfig(JSON.stringify({ server: { auth: { provider_type: "oauth2_token", config: { jwks: { uri: idp.jwksUri, key_recheck_period: 60 }, audience: "llama-stack" } } } }));
    const provider = config.server.auth!.provider_config as OAuth2ProviderConfig;
    assert.equal(provider.type, "oauth2_token");
    assert.equal(provider.jwks?.key_recheck_period, 60);
    assert.equal(provider.claims_mapping.sub, "roles");
  });

  test("a token signed with an unknown kid refreshes the JWKS once and is then refused", async () => {
    const p = provider();
    await outcome(p, await idp.token());
    const before = idp.jwksFetches;
    const stranger = newSigningKey();
    const nowSec = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ sub: "intruder", aud: "llama-stack", iss: idp.issuer, exp: nowSec + 300 })
      .setProtectedHeader({ alg: "RS256", kid: stranger.kid })
      .sign(stranger.privateKey);
    assert.deepEqual(await outcome(p, token), { status: 401, message: "Invalid JWT token" });
    assert.equal(idp.jwksFetches, before + 1);
  });

  test("with typ: at+jwt, the provider's RFC 9068 tokens pass and a plain JWT does not", async () => {
    const p = provider({ typ: "at+jwt" });
    assert.equal("principal" in (await outcome(p, await idp.token())), true);
    assert.deepEqual(await outcome(p, await signedByIdp({}, { typ: "JWT" })), { status: 401, message: "Invalid JWT token" });
  });

  test("a token without sub is refused", async () => {
    assert.deepEqual(await outcome(provider(), await signedByIdp({ sub: undefined })), { status: 401, message: "Invalid JWT token" });
  });

  test("after the provider rotates its key, new tokens are accepted without a restart, and old ones while the old key is published", async () => {
    const p = provider();
    const oldToken = await idp.token();
    assert.equal("principal" in (await outcome(p, oldToken)), true);
    const key = await idp.rotate();
    const newToken = await idp.token();
    assert.equal(JSON.parse(Buffer.from(newToken.split(".")[0]!, "base64url").toString()).kid, key.kid);
    assert.equal("principal" in (await outcome(p, newToken)), true);
    assert.equal("principal" in (await outcome(p, oldToken)), true);
  });

  test("once the old key is withdrawn and the key set rechecked, tokens signed with it are refused", async () => {
    const p = provider({ cache_ttl_ms: 0, jwks: { key_recheck_period: 1 } });
    const oldToken = await idp.token();
    assert.equal("principal" in (await outcome(p, oldToken)), true);
    await idp.rotate({ dropOld: true });
    clockOffsetMs = 2000; // past key_recheck_period
    try {
      assert.deepEqual(await outcome(p, oldToken), { status: 401, message: "Invalid JWT token" });
      assert.equal("principal" in (await outcome(p, await idp.token())), true);
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("while the provider is down a gateway with no cached keys answers 503, and recovers when it is back", async () => {
    const token = await idp.token();
    await idp.stop();
    const p = provider({ timeout_ms: 2000 });
    try {
      assert.deepEqual(await outcome(p, token), { status: 503, message: "Identity provider keys unavailable" });
    } finally {
      await idp.restart();
    }
    assert.equal((await outcome(p, token) as { principal: string }).principal, "tollgate-test-client");
  });

  test("cached keys keep verifying while the provider is down", async () => {
    const p = provider({ cache_ttl_ms: 0 });
    const token = await idp.token();
    assert.equal("principal" in (await outcome(p, token)), true);
    await idp.stop();
    try {
      assert.equal("principal" in (await outcome(p, token)), true);
    } finally {
      await idp.restart();
    }
  });

  test("a flood of 10,000 tokens with unknown kids causes at most a handful of JWKS fetches", async () => {
    const p = provider({ jwks: { refresh_cooldown_ms: 30_000 } });
    await outcome(p, await idp.token());
    const before = idp.jwksFetches;
    const stranger = newSigningKey();
    const nowSec = Math.floor(Date.now() / 1000);
    const forge = (i: number) =>
      new SignJWT({ sub: "intruder", aud: "llama-stack", iss: idp.issuer, exp: nowSec + 300 })
        .setProtectedHeader({ alg: "RS256", kid: `made-up-${i}` })
        .sign(stranger.privateKey);
    const tokens = await Promise.all(Array.from({ length: 100 }, (_, i) => forge(i)));
    let refused = 0;
    for (let round = 0; round < 100; round++) {
      const results = await Promise.all(tokens.map((t) => p.authenticate({ token: t, path: "/", query: "", headers: {} }).then(() => 200, (e: { status: number }) => e.status)));
      refused += results.filter((s) => s === 401).length;
    }
    assert.equal(refused, 10_000);
    assert.ok(idp.jwksFetches - before <= 3, `${idp.jwksFetches - before} JWKS fetches`);
  });

  test("jwks.token is sent as a Bearer token when fetching the key set", async () => {
    const seen: (string | undefined)[] = [];
    const jwks = JSON.stringify({ keys: idp.keys.map((k) => k.publicJwk) });
    const server = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      if (req.headers.authorization !== "Bearer jwks-reader-token") res.writeHead(401).end();
      else res.writeHead(200, { "content-type": "application/json" }).end(jwks);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/openid/v1/jwks`;
      const token = await idp.token();
      assert.equal("principal" in (await outcome(provider({ jwks: { uri, token: "jwks-reader-token" } }), token)), true);
      assert.deepEqual(await outcome(provider({ jwks: { uri } }), token), { status: 503, message: "Identity provider keys unavailable" });
      assert.deepEqual(seen, ["Bearer jwks-reader-token", undefined]);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test("the message for a missing token names the issuer, as Llama Stack's does", () => {
    assert.equal(provider().authRequiredMessage, `Authentication required. Please provide a valid OAuth2 Bearer token from ${idp.issuer}`);
    assert.equal(provider({ issuer: undefined }).authRequiredMessage, "Authentication required. Please provide a valid OAuth2 Bearer token in the Authorization header");
  });

  test("no token ever appears in the log", () => {
    const text = captured.text();
    // Refused tokens were logged (where a careless line would carry them), so the search below can find one.
    assert.match(text, /"msg":"JWT refused"/);
    assert.ok(tokensSeen.length > 20);
    for (const token of tokensSeen) {
      for (const part of token.split(".").filter((s) => s.length > 20)) assert.equal(text.includes(part), false);
    }
  });
});

