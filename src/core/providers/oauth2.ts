import { errors as joseErrors, jwtVerify, type JWTPayload } from "jose";
import { DEFAULT_INTROSPECTION_CACHE_TTL_MS, DEFAULT_JWT_CACHE_TTL_MS, isHmacAlgorithm, type ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError, TollgateError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import { attributesFromClaims } from "./claims.js";
import { createHttpClient, serviceUrl } from "./http.js";
import { createIntrospector } from "./introspection.js";
import { createRemoteKeySet, type RemoteKeySet } from "./jwks.js";
import { createTokenCache } from "./token-cache.js";
import type { AuthProvider, AuthRequest, ProviderObserver } from "./types.js";

/** `server.auth.provider_config` of type `oauth2_token`, defaults filled in. */
export type OAuth2ProviderConfig = Extract<ProviderConfig, { type: "oauth2_token" }>;

export interface OAuth2ProviderDeps {
  log: Logger;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
  /** Told about identity-service calls and cache lookups (metrics). */
  observer?: ProviderObserver | undefined;
}

/** The provider, plus its key set (for tests and metrics: how many JWKS fetches happened). */
export interface OAuth2Provider extends AuthProvider {
  readonly keySet: RemoteKeySet | undefined;
}

const INVALID_JWT = "Invalid JWT token";

/**
 * Llama Stack's `oauth2_token` provider: bearer tokens are JWTs verified
 * locally against the identity provider's JWKS (`jwks`), or any token asked
 * about by RFC 7662 introspection (`introspection`).
 *
 * Unlike the reference, the algorithm comes from the configured allow-list
 * (`algorithms`: asymmetric by default, or HMAC pinned alone, then `oct`
 * keys), never from the token's own `alg` header, and the key type must fit
 * it: that closes `alg: none` and the HS256-signed-with-the-public-key attack.
 * A verified JWT is reused, keyed by its hash, for `cache_ttl_ms` (default
 * 30 s) and never past its `exp`; introspection asks every time unless
 * `cache_ttl_ms` is set (a revoked token must stop working at once, as in the
 * reference).
 *
 * @example createOAuth2Provider({ type: "oauth2_token", jwks: { uri: "https://idp/certs", ... }, audience: "llama-stack", ... }, { log })
 */
export function createOAuth2Provider(config: OAuth2ProviderConfig, deps: OAuth2ProviderDeps): OAuth2Provider {
  const now = deps.now ?? Date.now;
  const log = deps.log.child({ component: "auth.oauth2" });
  const owner = "oauth2_token provider";
  const observer = deps.observer;
  const http = createHttpClient({
    timeoutMs: config.timeout_ms,
    verifyTls: config.verify_tls,
    tlsCafile: config.tls_cafile,
    owner,
    observer,
    service: config.jwks ? "jwks" : "introspection",
    log,
  });
  const cacheTtlMs = config.cache_ttl_ms ?? (config.jwks ? DEFAULT_JWT_CACHE_TTL_MS : DEFAULT_INTROSPECTION_CACHE_TTL_MS);
  if (!http.verifiesTls) log.warn("TLS certificate verification is off for the identity provider (verify_tls: false)");

  // The issuer is public (every token carries it); the introspection
  // endpoint is an internal address, which an unauthenticated caller never sees.
  const authRequiredMessage =
    config.jwks && config.issuer
      ? `Authentication required. Please provide a valid OAuth2 Bearer token from ${config.issuer}`
      : "Authentication required. Please provide a valid OAuth2 Bearer token in the Authorization header";

  let authenticateToken: (token: string, signal: AbortSignal | undefined) => Promise<User>;
  let keySet: RemoteKeySet | undefined;
  let ready: () => Promise<string | undefined>;

  if (config.jwks) {
    const jwks = config.jwks;
    keySet = createRemoteKeySet({
      uri: serviceUrl(jwks.uri, owner, "jwks.uri"),
      http,
      log: log.child({ component: "jwks" }),
      recheckMs: jwks.key_recheck_period * 1000,
      cooldownMs: jwks.refresh_cooldown_ms,
      token: jwks.token,
      hmac: config.algorithms.some(isHmacAlgorithm),
      now,
    });
    const getKey = keySet.getKey;
    ready = keySet.ready;
    const cache = createTokenCache<User>(now, undefined, observer && ((hit) => observer.cacheLookup("verified_token", hit)));
    const audience = typeof config.audience === "string" ? config.audience : [...config.audience];
    const verifyOptions = {
      algorithms: [...config.algorithms],
      audience,
      ...(config.issuer !== undefined ? { issuer: config.issuer } : {}),
      ...(config.typ !== undefined ? { typ: config.typ } : {}),
      clockTolerance: config.leeway,
      // jose reads the clock itself; a fake clock in tests must reach it too.
      get currentDate() {
        return new Date(now());
      },
    };

    authenticateToken = async (token) => {
      const cached = cache.get(token);
      if (cached) return cached;
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, getKey, verifyOptions));
      } catch (err) {
        if (err instanceof TollgateError) throw err;
        // The reason is logged (its code names the failed check); the token never is.
        log.debug({ reason: err instanceof joseErrors.JOSEError ? err.code : "malformed" }, "JWT refused");
        throw new AuthError("invalid_token", INVALID_JWT);
      }
      if (typeof payload.sub !== "string" || payload.sub === "") {
        log.debug({ reason: "no sub claim" }, "JWT refused");
        throw new AuthError("invalid_token", INVALID_JWT);
      }
      const user = makeUser(payload.sub, attributesFromClaims(payload as Record<string, unknown>, config.claims_mapping));
      if (cacheTtlMs > 0) {
        const until = now() + cacheTtlMs;
        cache.set(token, user, typeof payload.exp === "number" ? Math.min(until, payload.exp * 1000) : until);
      }
      return user;
    };
  } else if (config.introspection) {
    const introspect = createIntrospector({
      introspection: config.introspection,
      claimsMapping: config.claims_mapping,
      cacheTtlMs,
      url: serviceUrl(config.introspection.url, owner, "introspection.url"),
      http,
      log,
      now,
      onCacheLookup: observer && ((hit) => observer.cacheLookup("introspection", hit)),
    });
    authenticateToken = introspect;
    const introspectionUrl = serviceUrl(config.introspection.url, owner, "introspection.url");
    // A GET of the endpoint (RFC 7662 serves POST: a 4xx answer proves it
    // is up) sends no token and asks nothing of the provider's database.
    ready = () => http.probe(introspectionUrl);
  } else {
    throw new Error(`${owner}: one of jwks or introspection must be configured`);
  }

  return {
    type: "oauth2_token",
    credential: "bearer",
    authRequiredMessage,
    keySet,
    ready: () => ready(),
    async authenticate(req: AuthRequest): Promise<User> {
      if (req.token === undefined) throw new AuthError("missing_credential", authRequiredMessage);
      try {
        return await authenticateToken(req.token, req.signal);
      } catch (err) {
        if (err instanceof TollgateError) throw err;
        log.error({ err: err instanceof Error ? err.name : "unknown" }, "token validation failed unexpectedly");
        throw new IdentityUnavailableError("Authentication service error");
      }
    },
    async close() {
      keySet?.close();
      await http.close();
    },
  };
}
