#!/usr/bin/env node
// Stage 3 cost of oauth2_token: JWT verification per second, with the
// verified-token cache (a hot client) and without it (a signature check per
// request), and introspection answered from its cache, as ratios to the
// api_key provider (cache hit) of the same run. In-process, against a
// loopback JWKS / introspection endpoint; the providers are the built ones (dist/).
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT } from "jose";
import { providerConfigSchema } from "../../dist/core/config/schema.js";
import { createLogger } from "../../dist/core/log.js";
import { createOAuth2Provider } from "../../dist/core/providers/oauth2.js";
import { createApiKeyProvider } from "../../dist/core/providers/api-key.js";
import { openSqliteRecordStore } from "../../dist/core/stores/sqlite.js";
import { createApiKey } from "../../dist/core/keys.js";
import { measureAsync, table } from "./_measure.mjs";

const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
const keys = [
  { ...publicKey.export({ format: "jwk" }), kid: "rsa-1", alg: "RS256", use: "sig" },
  { ...ec.publicKey.export({ format: "jwk" }), kid: "ec-1", alg: "ES256", use: "sig" },
];
const server = http.createServer((req, res) => {
  if (req.url === "/jwks") return res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys }));
  req.resume();
  req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: "bench", exp: Math.floor(Date.now() / 1000) + 3600 })));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;
const log = createLogger("silent");

const claims = { sub: "bench-user", aud: "llama-stack", iss: base, groups: ["a", "b"], scope: "models.read chat" };
const exp = Math.floor(Date.now() / 1000) + 3600;
const rs256 = await new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: "rsa-1" }).setExpirationTime(exp).sign(privateKey);
const es256 = await new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "ec-1" }).setExpirationTime(exp).sign(ec.privateKey);

const provider = (overrides) =>
  createOAuth2Provider(providerConfigSchema.parse({ type: "oauth2_token", issuer: base, ...overrides }), { log });
const cached = provider({ jwks: { uri: `${base}/jwks` } });
const uncached = provider({ jwks: { uri: `${base}/jwks` }, cache_ttl_ms: 0 });
const introspected = provider({ introspection: { url: `${base}/introspect`, client_id: "c", client_secret: "s" } });
const request = (token) => ({ token, path: "/v1/chat/completions", query: "", headers: {} });

const dir = mkdtempSync(join(tmpdir(), "tollgate-bench-jwt-"));
const store = await openSqliteRecordStore(join(dir, "keys.db"));
const { key } = await createApiKey(store, { principal: "bench", attributes: { roles: ["user"] } });
const apiKey = createApiKeyProvider({ type: "api_key", cache_ttl_ms: 500 }, { store, log });

const rows = [
  await measureAsync("api_key, lookup cache hit (the baseline)", () => apiKey.authenticate(request(key))),
  await measureAsync("JWT RS256, verified-token cache hit", () => cached.authenticate(request(rs256))),
  await measureAsync("JWT RS256, uncached (signature checked every time)", () => uncached.authenticate(request(rs256))),
  await measureAsync("JWT ES256, uncached (signature checked every time)", () => uncached.authenticate(request(es256))),
  await measureAsync("introspection, cache hit", () => introspected.authenticate(request("opaque-bench-token"))),
];
for (const p of [apiKey, cached, uncached, introspected]) await p.close();
await store.close();
rmSync(dir, { recursive: true, force: true });
server.closeAllConnections();
server.close();
console.log(table("OAuth2 token verification (per request, in-process)", rows, { ratios: true }));
