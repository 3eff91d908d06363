import type { ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import { attributesFromClaims } from "./claims.js";
import { createHttpClient, isPlainObject, OutboundError, parseJson, serviceUrl } from "./http.js";
import { createTokenCache } from "./token-cache.js";
import type { AuthProvider, AuthRequest, ProviderObserver } from "./types.js";

/** `server.auth.provider_config` of type `kubernetes`, defaults filled in. */
export type KubernetesProviderConfig = Extract<ProviderConfig, { type: "kubernetes" }>;

export interface KubernetesProviderDeps {
  log: Logger;
  now?: () => number;
  /** Told about identity-service calls and cache lookups (metrics). */
  observer?: ProviderObserver | undefined;
}

const REVIEW_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

/**
 * Llama Stack's `kubernetes` provider: the API server itself says whose token
 * it is. Tollgate POSTs a `SelfSubjectReview` *with the caller's token*
 * (no credential of its own is needed) and reads `status.userInfo`
 * (`{username, uid, groups, extra}`) from the `201 Created` answer; the
 * principal is `username`, attributes come from `claims_mapping` over
 * `userInfo` (default `username → roles`, `groups → roles`).
 *
 * 401 → `Invalid token`; other 4xx → `Token validation failed: <status>`;
 * 5xx, timeouts and an unreachable API server → 503.
 */
export function createKubernetesProvider(config: KubernetesProviderConfig, deps: KubernetesProviderDeps): AuthProvider {
  const now = deps.now ?? Date.now;
  const log = deps.log.child({ component: "auth.kubernetes" });
  const owner = "kubernetes provider";
  const base = serviceUrl(config.api_server_url, owner, "api_server_url");
  const url = new URL(base.href.replace(/\/+$/, "") + REVIEW_PATH);
  const host = base.host;
  const observer = deps.observer;
  const http = createHttpClient({ timeoutMs: config.timeout_ms, verifyTls: config.verify_tls, tlsCafile: config.tls_cafile, owner, observer, service: "kubernetes", log });
  // `GET /readyz`: the API server's own readiness, readable without a
  // credential (the system:public-info-viewer role), answered 500 while it
  // cannot serve reviews.
  const readinessUrl = new URL(base.href.replace(/\/+$/, "") + "/readyz");
  if (!http.verifiesTls) log.warn({ host }, "TLS certificate verification is off for the Kubernetes API server (verify_tls: false)");
  const cache = createTokenCache<User>(now, undefined, observer && ((hit) => observer.cacheLookup("kubernetes", hit)));
  const authRequiredMessage = "Authentication required. Please provide a valid Kubernetes authentication token in the Authorization header";

  async function authenticate(req: AuthRequest): Promise<User> {
    const token = req.token;
    if (token === undefined) throw new AuthError("missing_credential", authRequiredMessage);
    const cached = cache.get(token);
    if (cached) return cached;
    let res;
    try {
      res = await http.request(url, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" }),
        signal: req.signal,
        readBody: (status) => status === 200 || status === 201,
      });
    } catch (err) {
      if (!(err instanceof OutboundError)) throw err;
      if (err.kind === "cancelled") throw new IdentityUnavailableError("Authentication cancelled: the client closed the connection");
      log.warn({ host, err: err.detail }, `Kubernetes API server ${err.kind}`);
      throw new IdentityUnavailableError(err.kind === "timeout" ? "Kubernetes API server timeout" : "Kubernetes API server unavailable");
    }
    if (res.status === 401) throw new AuthError("invalid_token", "Invalid token");
    if (res.status >= 500) {
      log.warn({ host, status: res.status }, "Kubernetes API server failed");
      throw new IdentityUnavailableError("Kubernetes API server unavailable");
    }
    if (res.status !== 201 && res.status !== 200) {
      log.warn({ host, status: res.status }, "SelfSubjectReview refused");
      throw new AuthError("invalid_token", `Token validation failed: ${res.status}`);
    }
    const review = parseJson(res.body);
    const status = isPlainObject(review) ? review.status : undefined;
    const userInfo = isPlainObject(status) ? status.userInfo : undefined;
    if (!isPlainObject(userInfo) || typeof userInfo.username !== "string" || userInfo.username === "") {
      throw new AuthError("invalid_token", "No username found in token validation response");
    }
    const user = makeUser(userInfo.username, attributesFromClaims(userInfo, config.claims_mapping));
    if (config.cache_ttl_ms > 0) cache.set(token, user, now() + config.cache_ttl_ms);
    return user;
  }

  return {
    type: "kubernetes",
    credential: "bearer",
    authRequiredMessage,
    authenticate,
    ready: () => http.probe(readinessUrl),
    async close() {
      cache.clear();
      await http.close();
    },
  };
}
