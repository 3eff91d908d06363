import { parseBearer } from "./bearer.js";
import { AuthError, ForbiddenError, IdentityUnavailableError, RouteNotFoundError, TollgateError } from "./errors.js";
import { canonicalPath, canonicalTarget } from "./path.js";
import type { AuthProvider } from "./providers/types.js";
import { DEFAULT_POLICY, type Action, type CompiledAccessPolicy, type CompiledRoutePolicy, type CompiledScopeRule, type Decision } from "./policy/compile.js";
import { evaluateAccess, type Resource } from "./policy/evaluate.js";
import { checkRequiredScopes, evaluateRoute, routeMatchPath } from "./policy/routes.js";
import type { Quota } from "./quota/quota.js";
import { traced, type RequestTrace } from "./tracing/trace.js";
import type { User } from "./user.js";

/**
 * The request pipeline of DESIGN.md, framework-free. Adapters (the gateway,
 * `tollgate/node`) turn their request into a {@link PipelineRequest}, call
 * {@link Pipeline.authorize}, and either forward / handle the request with
 * the returned {@link RequestContext} or turn the thrown error into a
 * response with `toErrorResponse`.
 *
 * Stages, in order; the first that refuses ends the request:
 *   1. canonical path            (400)        — path.ts
 *   2. public route?             (skip 3–6)   — exact canonical match
 *   3. authenticate              (401 / 503)  — bearer.ts + providers/
 *   4. declared route?           (404)        — the gateway's catalog, through {@link PipelineOptions.declared}
 *      route policy and scopes   (403)        — policy/routes.ts
 *   5. quota                     (429 / 503)  — quota/quota.ts (requests consumed, token budgets checked)
 *   6. resource policy           (404 / 403)  — policy/evaluate.ts, through {@link Pipeline.checkAccess}
 *      (the adapter knows which resource a request touches: the gateway's catalog)
 *   7. forward                   (502 / 504)  — the gateway, with the context returned here
 */

/** A request as any adapter sees it. */
export interface PipelineRequest {
  readonly method: string;
  /** The request target as received: path and query (`/v1/models?limit=2`). */
  readonly url: string;
  /**
   * Headers, names lower-case. `authorization` is an array when the client sent
   * several (Node keeps only the first; adapters must pass them all, see
   * `authorizationHeaders`) so that two credentials are refused, not guessed between.
   */
  readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  /** The peer's address (for header-trusting providers and anonymous quotas). */
  readonly remoteAddress?: string | undefined;
  /** Aborted when the client disconnects. */
  readonly signal?: AbortSignal | undefined;
  /** The request's trace (`tracing`): stages 3–5 add their spans to it. Undefined when tracing is off: no span is made. */
  readonly trace?: RequestTrace | undefined;
}

/** What the pipeline established about a request it let through. */
export interface RequestContext {
  /** Canonical path: what every stage matched and what goes upstream. */
  readonly path: string;
  /** Raw query string without `?`. */
  readonly query: string;
  /** True when the path is public and authentication was skipped. */
  readonly public: boolean;
  /** The authenticated caller; undefined on public paths and when authentication is off. */
  readonly user: User | undefined;
  /**
   * Headers the response must carry (stage 5: `RateLimit`, `RateLimit-Policy`),
   * names lower-case. Adapters set them on whatever response follows,
   * success or error; absent when there are none.
   */
  readonly responseHeaders?: Readonly<Record<string, string>> | undefined;
  /**
   * Present when the client has LLM token budgets: call it with the `usage`
   * total of the response (the gateway does, JSON and streamed). Never rejects.
   */
  readonly recordTokens?: ((tokens: number) => Promise<void>) | undefined;
  /**
   * Present when the client has spend budgets: call it with each answer's
   * cost in billionths of the currency (from `pricing`). Never rejects.
   */
  readonly recordSpend?: ((nanos: number) => Promise<void>) | undefined;
}

/** One access decision, as handed to {@link PipelineOptions.onDecision} for the audit log. Never holds a secret. */
export interface AccessDecisionEvent {
  readonly principal: string | undefined;
  /** `create`/`read`/`update`/`delete`, or `route` for the route policy. */
  readonly action: Action | "route";
  /** `type::id`, or the canonical path for the route policy. */
  readonly resource: string;
  readonly decision: Decision;
}

export interface PipelineOptions {
  /** Exact canonical paths that skip authentication. */
  publicPaths: readonly string[];
  /** The authentication provider; undefined turns authentication off. */
  provider: AuthProvider | undefined;
  /** Called with provider failures that became 503, for logging (never with a token). */
  onProviderError?: (err: unknown) => void;
  /**
   * Called after each authentication with its outcome (`ok`, `refused` 401,
   * `unavailable` 503) and how long the provider took, in seconds (metrics).
   */
  onAuthenticated?: (outcome: "ok" | "refused" | "unavailable", seconds: number) => void;
  /** Compiled `access_policy` (compile.ts); default: the reference's default policy. */
  accessPolicy?: CompiledAccessPolicy | undefined;
  /** Compiled `route_policy`; default: none (every route allowed). */
  routePolicy?: CompiledRoutePolicy | undefined;
  /** Compiled `required_scopes`; default: none. */
  requiredScopes?: readonly CompiledScopeRule[] | undefined;
  /** Called with every route and resource decision, for the audit log. */
  onDecision?: (event: AccessDecisionEvent) => void;
  /** Stage 5 (`server.quota`); default: no quotas. */
  quota?: Quota | undefined;
  /**
   * Is `method` on this path (`routeMatchPath` form) a declared route? Asked
   * after authentication, before the route policy: an undeclared route is a
   * 404 `route_not_found` that uses no quota (the gateway's catalog,
   * `server.resources.unlisted: deny`). Default: every route is declared.
   */
  declared?: ((method: string, matchPath: string) => boolean) | undefined;
}

export interface Pipeline {
  /** Stages 1–4: canonical path, public routes, authentication, route policy and required scopes. */
  authorize(request: PipelineRequest): Promise<RequestContext>;
  /**
   * Stage 6: may the request's user perform `action` on `resource`? Returns
   * the decision (and reports it to `onDecision`); the caller turns a denial
   * into 404 (a read: the resource must not be seen to exist) or 403.
   */
  checkAccess(context: RequestContext, action: Action, resource: Resource): Decision;
}

/**
 * Collects every `Authorization` header from Node's `rawHeaders`, which keeps
 * duplicates that `IncomingMessage.headers` silently drops.
 */
export function authorizationHeaders(rawHeaders: readonly string[]): string[] | undefined {
  let found: string[] | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length === 13 && rawHeaders[i]!.toLowerCase() === "authorization") {
      (found ??= []).push(rawHeaders[i + 1] ?? "");
    }
  }
  return found;
}

/** Methods a public path is declared for by being public. */
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

function canonicalPublicPath(path: string): string {
  try {
    return canonicalPath(path);
  } catch {
    throw new Error(`public path ${JSON.stringify(path)} is not an absolute path such as /health`);
  }
}

/** Builds the pipeline from its parts; see {@link PipelineOptions}. Throws when a public path is not an absolute path. */
export function createPipeline({
  publicPaths,
  provider,
  onProviderError,
  onAuthenticated,
  accessPolicy = DEFAULT_POLICY,
  routePolicy,
  requiredScopes = [],
  onDecision,
  quota,
  declared,
}: PipelineOptions): Pipeline {
  // Exact match only: the reference exempts any path that merely ends in
  // /health, so /v1/secret/health would skip authentication there. Matched
  // canonical against canonical: a library caller's "/health/" must still
  // match, and the config loader has already canonicalised its own.
  const publicSet = new Set(publicPaths.map(canonicalPublicPath));

  async function authenticate(request: PipelineRequest, path: string, query: string): Promise<User | undefined> {
    if (!provider) return undefined;
    let token: string | undefined;
    if (provider.credential === "bearer") {
      token = parseBearer(request.headers.authorization);
      if (token === undefined) throw new AuthError("missing_credential", provider.authRequiredMessage);
    }
    const started = onAuthenticated ? performance.now() : 0;
    try {
      const user = await provider.authenticate({
        token,
        path,
        query,
        headers: request.headers as Record<string, string | string[] | undefined>,
        remoteAddress: request.remoteAddress,
        signal: request.signal,
      });
      onAuthenticated?.("ok", (performance.now() - started) / 1000);
      return user;
    } catch (err) {
      onAuthenticated?.(err instanceof TollgateError && err.status === 401 ? "refused" : "unavailable", (performance.now() - started) / 1000);
      if (err instanceof TollgateError) throw err;
      // Fail closed: an unexpected failure of the identity check never lets a request through.
      onProviderError?.(err);
      throw new IdentityUnavailableError("Authentication service error");
    }
  }

  /** Stage 4: is the route declared, does the route policy allow it, does the user have the required scopes? Throws when not. */
  function authorizeRoute(method: string, user: User | undefined, path: string, matchPath: string): void {
    if (declared && !declared(method, matchPath)) throw new RouteNotFoundError();
    // Also without a user: a route_policy with no provider still decides (Llama Stack 0.7).
    if (routePolicy !== undefined && routePolicy.rules.length > 0) {
      const decision = evaluateRoute(routePolicy, user, matchPath);
      onDecision?.({ principal: user?.principal, action: "route", resource: path, decision });
      // The reference's words, with the path it was asked for (canonical here).
      if (!decision.allowed) throw new ForbiddenError(`Access denied: insufficient permissions for route ${path}`, "route_denied");
    }
    checkRequiredScopes(requiredScopes, user, matchPath);
  }

  return {
    async authorize(request) {
      const { path, query } = canonicalTarget(request.url);
      // Route rules, scopes and the catalog match a case-insensitive form (routes.ts).
      const matchPath = routeMatchPath(path);
      if (publicSet.has(path)) {
        // A public path is declared for reading it; another method on it must be declared like any route.
        if (declared && !SAFE_METHODS.has(request.method) && !declared(request.method, matchPath)) throw new RouteNotFoundError();
        return { path, query, public: true, user: undefined };
      }
      // Tracing: each stage in its span (traced()), only when the request has a trace.
      const trace = request.trace;
      const user = await (trace && provider ? traced(trace.stage("authenticate"), authenticate(request, path, query)) : authenticate(request, path, query));
      const routeSpan = trace?.stage("route_policy");
      try {
        authorizeRoute(request.method, user, path, matchPath);
      } catch (err) {
        routeSpan?.end(err);
        throw err;
      }
      routeSpan?.end();
      if (!quota) return { path, query, public: false, user };
      const check = quota.check({ user, remoteAddress: request.remoteAddress, headers: request.headers });
      const grant = await (trace ? traced(trace.stage("quota"), check) : check);
      return { path, query, public: false, user, responseHeaders: grant.headers, recordTokens: grant.recordTokens, recordSpend: grant.recordSpend };
    },
    checkAccess(context, action, resource) {
      const decision = evaluateAccess(accessPolicy, context.user, action, resource);
      if (context.user !== undefined) onDecision?.({ principal: context.user.principal, action, resource: resource.key, decision });
      return decision;
    },
  };
}
