import { generateKeyPairSync, randomUUID, type KeyObject } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { request } from "undici";

/**
 * A real OpenID provider (the `oidc-provider` package, the certified Node
 * implementation) on loopback, for the `oauth2_token` tests. It issues
 * client-credentials access tokens for a resource indicator (RFC 8707):
 *
 * - resource {@link JWT_RESOURCE}: JWT access tokens (RFC 9068, `typ: at+jwt`)
 *   with audience `llama-stack`, signed RS256 with the current key;
 * - resource {@link OPAQUE_RESOURCE}: opaque tokens, for introspection;
 * - resource {@link OTHER_RESOURCE}: JWTs for audience `other-service`.
 *
 * It answers introspection (`/token/introspection`) and revocation
 * (`/token/revocation`), rotates its signing key on demand (a new key first,
 * the old ones kept or dropped), and can be stopped and restarted on the same
 * port.
 */

export const JWT_RESOURCE = "https://api.tollgate.test/";
export const OPAQUE_RESOURCE = "https://opaque.tollgate.test/";
export const OTHER_RESOURCE = "https://other.tollgate.test/";

export const CLIENT_ID = "tollgate-test-client";
export const CLIENT_SECRET = "client-secret-0123456789";
/** A client allowed to introspect, authenticating with client_secret_post. */
export const POST_CLIENT_ID = "tollgate-post-client";
export const POST_CLIENT_SECRET = "post-secret-0123456789";

/** Extra claims every access token carries: groups, and Keycloak-style nested roles. */
export const EXTRA_CLAIMS = {
  groups: ["ml", "research"],
  tenant: "acme",
  resource_access: { tollgate: { roles: ["admin", "user"] } },
};

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: Record<string, unknown>;
  privateJwk: Record<string, unknown>;
}

/** A fresh RSA signing key with a random kid. */
export function newSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const kid = randomUUID();
  return {
    kid,
    privateKey,
    publicJwk: { ...publicKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" },
    privateJwk: { ...privateKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" },
  };
}

export interface OidcServer {
  /** `http://127.0.0.1:<port>`: the `iss` of its tokens. */
  readonly issuer: string;
  readonly jwksUri: string;
  readonly introspectionUrl: string;
  /** The keys it publishes, the signing key first. */
  readonly keys: readonly SigningKey[];
  /** How many times the JWKS was fetched. */
  readonly jwksFetches: number;
  /** Access token lifetime in seconds for tokens issued from now on. */
  tokenTtl: number;
  /** A client-credentials access token for `resource` (default {@link JWT_RESOURCE}). */
  token(resource?: string): Promise<string>;
  /** Revokes a token at the provider (RFC 7009). */
  revoke(token: string): Promise<void>;
  /** Puts a new signing key first; `dropOld` also stops publishing the previous ones. */
  rotate(options?: { dropOld?: boolean }): Promise<SigningKey>;
  stop(): Promise<void>;
  restart(): Promise<void>;
  close(): Promise<void>;
}

type ProviderInstance = { callback(): http.RequestListener };
type ProviderClass = new (issuer: string, config: Record<string, unknown>) => ProviderInstance;

/** Starts the provider on 127.0.0.1 on a free port. */
export async function startOidc(): Promise<OidcServer> {
  // oidc-provider ships no type declarations; only its constructor is used.
  const { default: Provider } = (await import("oidc-provider" as string)) as { default: ProviderClass };

  let keys: SigningKey[] = [newSigningKey()];
  let jwksFetches = 0;
  const settings = { tokenTtl: 300 };
  let handler: http.RequestListener = (_req, res) => res.writeHead(503).end();

  const makeServer = () =>
    http.createServer((req, res) => {
      if (req.url?.startsWith("/jwks")) jwksFetches++;
      handler(req, res);
    });
  let server = makeServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}`;

  const build = () => {
    const audienceOf = (resource: string) => (resource === OTHER_RESOURCE ? "other-service" : "llama-stack");
    const provider = new Provider(issuer, {
      clients: [
        {
          client_id: CLIENT_ID,
          client_secret: CLIENT_SECRET,
          grant_types: ["client_credentials"],
          response_types: [],
          redirect_uris: [],
          token_endpoint_auth_method: "client_secret_basic",
        },
        {
          client_id: POST_CLIENT_ID,
          client_secret: POST_CLIENT_SECRET,
          grant_types: ["client_credentials"],
          response_types: [],
          redirect_uris: [],
          token_endpoint_auth_method: "client_secret_post",
        },
      ],
      jwks: { keys: keys.map((k) => k.privateJwk) },
      cookies: { keys: ["test-cookie-key-0123456789"] },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: { enabled: true },
        revocation: { enabled: true },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => JWT_RESOURCE,
          useGrantedResource: () => true,
          getResourceServerInfo: (_ctx: unknown, resource: string) => ({
            scope: "models:read chat:write",
            audience: audienceOf(resource),
            accessTokenTTL: settings.tokenTtl,
            accessTokenFormat: resource === OPAQUE_RESOURCE ? "opaque" : "jwt",
            jwt: { sign: { alg: "RS256" } },
          }),
        },
      },
      extraTokenClaims: () => EXTRA_CLAIMS,
    });
    handler = provider.callback();
  };
  build();

  const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString("base64")}`;
  // Token and revocation calls are POSTs, which undici never sends twice: each
  // gets a connection of its own (`reset`), so none is sent on a pooled
  // keep-alive connection the provider is closing after a slow test step
  // (a key rotation under load), which failed the test with ECONNRESET.

  const stop = async () => {
    if (!server.listening) return;
    // close() first, so that nothing new is accepted, then cut every open
    // connection: cutting first leaves a window in which a client (a JWKS
    // refresh) opens a keep-alive connection that close() then waits on.
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  };
  const restart = async () => {
    if (server.listening) return;
    server = makeServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
  };

  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    introspectionUrl: `${issuer}/token/introspection`,
    get keys() {
      return keys;
    },
    get jwksFetches() {
      return jwksFetches;
    },
    get tokenTtl() {
      return settings.tokenTtl;
    },
    set tokenTtl(ttl: number) {
      settings.tokenTtl = ttl;
    },
    async token(resource = JWT_RESOURCE) {
      const res = await request(`${issuer}/token`, {
        method: "POST",
        reset: true,
        headers: { authorization: basic(CLIENT_ID, CLIENT_SECRET), "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ grant_type: "client_credentials", resource, scope: "models:read chat:write" }).toString(),
      });
      const body = (await res.body.json()) as { access_token?: string };
      if (res.statusCode !== 200 || !body.access_token) throw new Error(`token request failed: ${res.statusCode} ${JSON.stringify(body)}`);
      return body.access_token;
    },
    async revoke(token) {
      const res = await request(`${issuer}/token/revocation`, {
        method: "POST",
        reset: true,
        headers: { authorization: basic(CLIENT_ID, CLIENT_SECRET), "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ token }).toString(),
      });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`revocation failed: ${res.statusCode}`);
    },
    async rotate(options = {}) {
      const key = newSigningKey();
      keys = options.dropOld ? [key] : [key, ...keys];
      // A new Provider instance: its key store is fixed at construction. Tokens
      // it issued before are no longer known to introspection; JWTs stay verifiable.
      build();
      return key;
    },
    stop,
    restart,
    async close() {
      await stop();
    },
  };
}
