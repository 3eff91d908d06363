import type { ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import { attributesFromClaims } from "./claims.js";
import { createHttpClient, isPlainObject, OutboundError, parseJson, serviceUrl, type HttpResponse } from "./http.js";
import { createTokenCache } from "./token-cache.js";
import type { AuthProvider, AuthRequest, ProviderObserver } from "./types.js";

/** `server.auth.provider_config` of type `github_token`, defaults filled in. */
export type GitHubProviderConfig = Extract<ProviderConfig, { type: "github_token" }>;

export interface GitHubProviderDeps {
  log: Logger;
  now?: () => number;
  /** Told about identity-service calls and cache lookups (metrics). */
  observer?: ProviderObserver | undefined;
}

/** Pages of `/user/orgs` read at most (100 organizations each). */
export const MAX_ORG_PAGES = 20;

const INVALID = "GitHub token validation failed. Please check your token and try again.";

/**
 * Llama Stack's `github_token` provider: the bearer token is a GitHub access
 * token; `GET {github_api_base_url}/user` says who it belongs to and every
 * page of `/user/orgs` (followed through `Link: <...>; rel="next"`) which
 * organizations. The claims are `{login, id, organizations}`, mapped by
 * `claims_mapping` (default `login → roles`, `organizations → teams`).
 *
 * GitHub Enterprise: `github_api_base_url: https://ghe.example.com/api/v3`.
 * Pagination links are followed only on the API's own origin, so a hostile
 * `Link` header can never send the caller's token elsewhere. A token without
 * `read:org` (orgs answer 403/404) is accepted with no organizations.
 */
export function createGitHubProvider(config: GitHubProviderConfig, deps: GitHubProviderDeps): AuthProvider {
  const now = deps.now ?? Date.now;
  const log = deps.log.child({ component: "auth.github" });
  const owner = "github_token provider";
  const base = serviceUrl(config.github_api_base_url.replace(/\/+$/, ""), owner, "github_api_base_url");
  const baseText = base.href.replace(/\/+$/, "");
  const host = base.host;
  const observer = deps.observer;
  const http = createHttpClient({ timeoutMs: config.timeout_ms, verifyTls: config.verify_tls, tlsCafile: config.tls_cafile, owner, observer, service: "github", log });
  // GitHub's `GET /rate_limit` is documented not to count against the rate
  // limit, so probing it every few seconds costs the callers' budget nothing.
  const readinessUrl = new URL(`${baseText}/rate_limit`);
  const cache = createTokenCache<User>(now, undefined, observer && ((hit) => observer.cacheLookup("github", hit)));
  const authRequiredMessage =
    "Authentication required. Please provide a valid GitHub access token (https://github.com/settings/tokens) in the Authorization header";

  async function call(url: string, token: string, signal: AbortSignal | undefined): Promise<HttpResponse> {
    try {
      return await http.request(url, {
        headers: {
          authorization: `Bearer ${token}`,
          accept: "application/vnd.github+json",
          "user-agent": "tollgate",
          "x-github-api-version": "2022-11-28",
        },
        signal,
        readBody: (status) => status === 200,
      });
    } catch (err) {
      if (!(err instanceof OutboundError)) throw err;
      if (err.kind === "cancelled") throw new IdentityUnavailableError("Authentication cancelled: the client closed the connection");
      log.warn({ host, err: err.detail }, `GitHub API ${err.kind}`);
      throw new IdentityUnavailableError(err.kind === "timeout" ? "GitHub API timeout" : "GitHub API unavailable");
    }
  }

  /** 401: the token is bad. Rate limits and 5xx: GitHub cannot answer now (503). */
  function refuse(res: HttpResponse, what: string): never {
    const limited = res.status === 429 || (res.status === 403 && res.headers["x-ratelimit-remaining"] === "0");
    if (limited || res.status >= 500) {
      log.warn({ host, status: res.status, what }, limited ? "GitHub API rate limit reached" : "GitHub API failed");
      throw new IdentityUnavailableError(limited ? "GitHub API rate limit exceeded" : "GitHub API unavailable");
    }
    log.debug({ host, status: res.status, what }, "GitHub refused the token");
    throw new AuthError("invalid_token", INVALID);
  }

  async function organizations(token: string, signal: AbortSignal | undefined): Promise<string[]> {
    const orgs: string[] = [];
    let next: string | undefined = `${baseText}/user/orgs?per_page=100`;
    for (let page = 0; next !== undefined && page < MAX_ORG_PAGES; page++) {
      const res = await call(next, token, signal);
      if (res.status === 403 || res.status === 404) {
        if (res.headers["x-ratelimit-remaining"] === "0") refuse(res, "orgs");
        break; // no read:org: the token is fine, its organizations are not ours to see
      }
      if (res.status !== 200) refuse(res, "orgs");
      const body = parseJson(res.body);
      if (!Array.isArray(body)) throw new IdentityUnavailableError("GitHub API answered an unexpected body");
      for (const org of body) if (isPlainObject(org) && typeof org.login === "string") orgs.push(org.login);
      next = nextLink(res.headers.link);
      if (next !== undefined && new URL(next).origin !== base.origin) {
        log.warn({ host }, "GitHub pagination link to another origin ignored");
        next = undefined;
      }
    }
    return orgs;
  }

  async function authenticate(req: AuthRequest): Promise<User> {
    const token = req.token;
    if (token === undefined) throw new AuthError("missing_credential", authRequiredMessage);
    const cached = cache.get(token);
    if (cached) return cached;
    const res = await call(`${baseText}/user`, token, req.signal);
    if (res.status !== 200) refuse(res, "user");
    const user = parseJson(res.body);
    if (!isPlainObject(user) || typeof user.login !== "string" || user.login === "") {
      throw new IdentityUnavailableError("GitHub API answered an unexpected body");
    }
    const claims = {
      login: user.login,
      id: typeof user.id === "number" || typeof user.id === "string" ? String(user.id) : undefined,
      organizations: await organizations(token, req.signal),
    };
    const result = makeUser(user.login, attributesFromClaims(claims, config.claims_mapping));
    if (config.cache_ttl_ms > 0) cache.set(token, result, now() + config.cache_ttl_ms);
    log.debug({ principal: result.principal }, "authenticated");
    return result;
  }

  return {
    type: "github_token",
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

/** The `rel="next"` target of an RFC 8288 `Link` header, as GitHub sends it. */
export function nextLink(header: string | string[] | undefined): string | undefined {
  const text = Array.isArray(header) ? header.join(", ") : header;
  if (!text) return undefined;
  for (const part of text.split(/,\s*(?=<)/)) {
    const match = /^<([^>]*)>\s*;(.*)$/.exec(part.trim());
    if (match && /(?:^|;)\s*rel\s*=\s*"?(?:[^";]*\s)?next(?:\s[^";]*)?"?\s*(?:;|$)/i.test(match[2]!)) return match[1];
  }
  return undefined;
}
