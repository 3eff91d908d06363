// Gateways for the oauth2_token scenarios of bench/run.mjs: one with JWT
// verification cached (the default), one uncached (cache_ttl_ms: 0, a
// signature check per request), one with introspection answered from its
// cache. The JWKS and introspection endpoint are served from the calling
// process: each is asked once (then per cache period), so they cost the
// measurement nothing.
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { SignJWT } from "jose";

/**
 * Starts the identity endpoints and three gateways; resolves with a scenario
 * (`{name, url, headers}`) per gateway and a `close()` for the endpoints.
 * `startGateway(configLines)` starts one `tollgate serve` and resolves with its URL.
 */
export async function startOAuth2Scenarios({ startGateway }) {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "bench-1", alg: "RS256", use: "sig" }] });
  const exp = Math.floor(Date.now() / 1000) + 24 * 3600;
  const idp = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (req.url === "/jwks") return res.writeHead(200, { "content-type": "application/json" }).end(jwks);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: "bench", exp }));
    });
  });
  await new Promise((r) => idp.listen(0, "127.0.0.1", r));
  const issuer = `http://127.0.0.1:${idp.address().port}`;
  const token = await new SignJWT({ sub: "bench", aud: "llama-stack", iss: issuer, groups: ["a"], scope: "models.read" })
    .setProtectedHeader({ alg: "RS256", kid: "bench-1" })
    .setExpirationTime(exp)
    .sign(privateKey);
  const jwt = (cacheTtl) => `{type: oauth2_token, issuer: "${issuer}", jwks: {uri: "${issuer}/jwks"}, cache_ttl_ms: ${cacheTtl}}`;
  const introspection = `{type: oauth2_token, introspection: {url: "${issuer}/introspect", client_id: bench, client_secret: bench-secret}, cache_ttl_ms: 60000}`;
  const headers = { authorization: `Bearer ${token}` };
  const [cached, uncached, introspected] = await Promise.all([startGateway(jwt(30000)), startGateway(jwt(0)), startGateway(introspection)]);
  return {
    scenarios: [
      { name: "tollgate, oauth2_token JWT (verified-token cache)", url: `${cached}/v1/models`, headers },
      { name: "tollgate, oauth2_token JWT (uncached: RS256 check per request)", url: `${uncached}/v1/models`, headers },
      { name: "tollgate, oauth2_token introspection (cache hits)", url: `${introspected}/v1/models`, headers: { authorization: "Bearer opaque-bench-token" } },
    ],
    close() {
      idp.closeAllConnections();
      idp.close();
    },
  };
}

/** Writes a gateway config with `providerConfig` and returns its path. */
export function writeOAuth2Config(work, name, { port, upstream, providerConfig }) {
  const file = join(work, `${name}.yaml`);
  writeFileSync(
    file,
    ["server:", `  port: ${port}`, "  auth:", `    provider_config: ${providerConfig}`, `upstream: {url: "${upstream}"}`, "logging: {level: warn}"].join("\n"),
  );
  return file;
}
