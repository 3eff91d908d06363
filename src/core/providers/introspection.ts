import type { ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import { attributesFromClaims } from "./claims.js";
import { isPlainObject, OutboundError, parseJson, type HttpClient } from "./http.js";
import { createTokenCache, tokenHash } from "./token-cache.js";

type IntrospectionConfig = NonNullable<Extract<ProviderConfig, { type: "oauth2_token" }>["introspection"]>;

/**
 * How long an inactive answer is reused, at most, in ms: long enough that a
 * client retrying a dead token in a loop costs the identity provider little,
 * short enough that a token activated just after (clock skew at issue) works.
 */
export const INACTIVE_CACHE_MS = 5_000;

export interface IntrospectorOptions {
  introspection: IntrospectionConfig;
  claimsMapping: Readonly<Record<string, string>>;
  cacheTtlMs: number;
  url: URL;
  http: HttpClient;
  log: Logger;
  now: () => number;
  /** Told about every cache lookup (metrics). */
  onCacheLookup?: ((hit: boolean) => void) | undefined;
}

/** RFC 6749 §2.3.1: client_secret_basic credentials are form-encoded before base64. */
function formEncode(text: string): string {
  return encodeURIComponent(text).replace(/%20/g, "+");
}

/**
 * RFC 7662 token introspection, as Llama Stack's `introspect_token`:
 * `POST url` with `token=<token>`, the client authenticated by HTTP Basic
 * (client_secret_basic) or, with `send_secret_in_body`, by `client_id` and
 * `client_secret` in the form (client_secret_post).
 *
 * - `200 {"active": true, ...}` accepts; the principal is `sub`, else
 *   `username`, else `client_id`; attributes come from `claims_mapping` over the response.
 * - `200 {"active": false}` → 401 `Token not active`.
 * - another status below 500 → 401 `Token introspection failed: <status>` (as the reference).
 * - 5xx, unreachable, too slow, an answer over the size limit or a 200 that
 *   is not a JSON object → 503: the token was not judged, the service is
 *   broken (the reference says 401, which hides an outage behind "bad token").
 *
 * Concurrent checks of one token share one call (keyed by the token's hash):
 * a client firing 200 requests at once costs the identity provider one.
 * Answers are cached by token hash only when `cacheTtlMs` > 0: active ones
 * never past the token's `exp`; inactive ones for at most {@link INACTIVE_CACHE_MS}.
 */
export function createIntrospector(options: IntrospectorOptions): (token: string, signal: AbortSignal | undefined) => Promise<User> {
  const { introspection, claimsMapping, cacheTtlMs, url, http, log, now } = options;
  const host = url.host;
  const cache = createTokenCache<User | "inactive">(now, undefined, options.onCacheLookup);
  /** Calls in flight, by token hash (never the token: this map may be inspected or dumped). */
  const inFlight = new Map<string, Promise<User>>();
  const basic = `Basic ${Buffer.from(`${formEncode(String(introspection.client_id))}:${formEncode(String(introspection.client_secret))}`).toString("base64")}`;

  async function introspect(token: string): Promise<User> {
    const form = new URLSearchParams({ token });
    if (introspection.send_secret_in_body) {
      form.set("client_id", String(introspection.client_id));
      form.set("client_secret", String(introspection.client_secret));
    }
    const started = now();
    let res;
    try {
      res = await http.request(url, {
        method: "POST",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          accept: "application/json",
          ...(introspection.send_secret_in_body ? {} : { authorization: basic }),
        },
        body: form.toString(),
        // No client's signal: the call is shared by every request with this
        // token, and one caller hanging up must not fail the others. The
        // deadline (timeout_ms) still bounds it; each caller stops waiting on its own signal.
        readBody: (status) => status === 200,
      });
    } catch (err) {
      if (!(err instanceof OutboundError)) throw err;
      if (err.kind === "too_large") {
        log.warn({ host }, "introspection endpoint answered a body over the size limit");
        throw new IdentityUnavailableError("Token introspection error");
      }
      const timeout = err.kind === "timeout";
      log.warn({ host, ms: now() - started, err: err.detail }, timeout ? "introspection endpoint timed out" : "introspection endpoint unreachable");
      throw new IdentityUnavailableError(timeout ? "Token introspection timeout" : "Token introspection service unavailable");
    }
    if (res.status >= 500) {
      log.warn({ host, status: res.status }, "introspection endpoint failed");
      throw new IdentityUnavailableError("Token introspection service unavailable");
    }
    if (res.status !== 200) {
      log.warn({ host, status: res.status }, "token introspection failed");
      throw new AuthError("invalid_token", `Token introspection failed: ${res.status}`);
    }
    const fields = parseJson(res.body);
    if (!isPlainObject(fields)) {
      log.warn({ host }, "introspection endpoint answered 200 with a body that is not a JSON object");
      throw new IdentityUnavailableError("Token introspection error");
    }
    if (fields.active !== true) {
      if (cacheTtlMs > 0) cache.set(token, "inactive", now() + Math.min(cacheTtlMs, INACTIVE_CACHE_MS));
      throw new AuthError("invalid_token", "Token not active");
    }
    // sub, else username, as the reference; else client_id (RFC 7662 §2.2), the
    // only identity a client-credentials token has at many providers.
    const principal = [fields.sub, fields.username, fields.client_id].find((v): v is string => typeof v === "string" && v !== "");
    if (principal === undefined) {
      log.warn({ host }, "introspection answered an active token with neither sub nor username");
      throw new AuthError("invalid_token", "Token introspection error");
    }
    const user = makeUser(principal, attributesFromClaims(fields, claimsMapping));
    if (cacheTtlMs > 0) {
      const until = now() + cacheTtlMs;
      cache.set(token, user, typeof fields.exp === "number" ? Math.min(until, fields.exp * 1000) : until);
    }
    return user;
  }

  return async (token, signal) => {
    if (cacheTtlMs > 0) {
      const cached = cache.get(token);
      if (cached === "inactive") throw new AuthError("invalid_token", "Token not active");
      if (cached) return cached;
    }
    if (signal?.aborted) throw cancelled();
    const key = tokenHash(token);
    let shared = inFlight.get(key);
    if (!shared) {
      shared = introspect(token).finally(() => inFlight.delete(key));
      inFlight.set(key, shared);
    }
    return signal ? untilAborted(shared, signal) : shared;
  };
}

function cancelled(): IdentityUnavailableError {
  return new IdentityUnavailableError("Authentication cancelled: the client closed the connection");
}

/** `shared`, or a cancellation as soon as `signal` aborts (the shared call goes on for the others). */
function untilAborted<T>(shared: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(cancelled());
    signal.addEventListener("abort", onAbort, { once: true });
    shared.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
