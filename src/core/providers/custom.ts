import type { ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import { createHttpClient, isPlainObject, OutboundError, serviceUrl, type HttpResponse } from "./http.js";
import type { AuthProvider, AuthRequest, ProviderObserver } from "./types.js";

/** `server.auth.provider_config` of type `custom`, defaults filled in. */
export type CustomProviderConfig = Extract<ProviderConfig, { type: "custom" }>;

export interface CustomProviderDeps {
  log: Logger;
  /** Clock in milliseconds, for the latency in log lines; tests pass a fake one. */
  now?: () => number;
  /** Told about identity-service calls and cache lookups (metrics). */
  observer?: ProviderObserver | undefined;
}

/**
 * Largest response body read from the endpoint. A principal and its
 * attributes fit in a few KiB; anything near this is a broken or hostile
 * endpoint, and reading it unbounded would let it exhaust our memory.
 */
export const MAX_AUTH_RESPONSE_BYTES = 1024 * 1024;

const INVALID_FORMAT = "Invalid authentication response format";

/** The body POSTed to the endpoint: Llama Stack's `AuthRequest`, field for field. */
interface CustomAuthRequestBody {
  api_key: string;
  request: {
    path: string;
    headers: Record<string, string>;
    params: Record<string, string[]>;
  };
}

/**
 * Validates bearer tokens against an HTTP endpoint of the operator's own, as
 * Llama Stack's `custom` provider does, with the same wire format:
 *
 * ```
 * POST {endpoint}
 * {"api_key": "<token>", "request": {"path": "/v1/models", "headers": {...}, "params": {"limit": ["10"]}}}
 * ```
 *
 * `headers` are the request's headers without `authorization` (names
 * lower-case, repeated headers joined with `", "`), `params` the query string
 * parsed as Python's `parse_qs` does, and `path` the canonical path (what the
 * rest of the pipeline sees, not what the client typed).
 *
 * The endpoint answers 200 with `{"principal": "...", "attributes": {"roles":
 * ["admin"]}}` to accept. Any other 2xx/3xx/4xx refuses the token (401
 * `Authentication failed: <status>`). Unlike the reference, a 5xx, a refused
 * connection or a timeout is reported as 503: the token was not judged, the
 * service is broken, and an operator should see that rather than a flood of
 * "bad token" 401s.
 *
 * TLS: `verify_tls: false` turns certificate checks off; `tls_cafile` trusts
 * only the CAs in that PEM file and, as in the reference, keeps verification on.
 *
 * @example createCustomProvider({ type: "custom", endpoint: "https://auth.internal/validate", timeout_ms: 5000, verify_tls: true }, { log })
 */
export function createCustomProvider(config: CustomProviderConfig, deps: CustomProviderDeps): AuthProvider {
  const { endpoint, timeout_ms: timeoutMs } = config;
  const log = deps.log.child({ component: "auth.custom" });
  const now = deps.now ?? Date.now;

  const url = serviceUrl(endpoint, "custom auth provider", "endpoint");
  // Credentials in the endpoint URL (`https://user:pass@auth/validate`) are
  // sent as HTTP Basic, as the reference's HTTP client does; undici would
  // silently drop them.
  const endpointAuthorization = url.username || url.password
    ? `Basic ${Buffer.from(`${percentDecoded(url.username)}:${percentDecoded(url.password)}`).toString("base64")}`
    : undefined;
  url.username = "";
  url.password = "";
  // Only the host ever appears in logs: the endpoint URL may carry
  // credentials or a secret path. Messages to clients name neither: the
  // reference's "(validated by <endpoint>)" tells an unauthenticated caller
  // an internal host and port.
  const host = url.host;
  const authRequiredMessage = "Authentication required. Please provide your API key as a Bearer token in the Authorization header";

  const http = createHttpClient({
    timeoutMs,
    verifyTls: config.verify_tls,
    tlsCafile: config.tls_cafile,
    owner: "custom auth provider",
    observer: deps.observer,
    service: "custom",
    log,
  });
  if (!http.verifiesTls) log.warn({ host }, "TLS certificate verification is off for the custom auth endpoint (verify_tls: false)");

  async function authenticate(req: AuthRequest): Promise<User> {
    if (req.token === undefined) throw new AuthError("missing_credential", authRequiredMessage);
    const body: CustomAuthRequestBody = {
      api_key: req.token,
      request: { path: req.path, headers: forwardedHeaders(req.headers), params: parsePythonQuery(req.query) },
    };

    const started = now();
    let res: HttpResponse;
    try {
      res = await http.request(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json",
          ...(endpointAuthorization ? { authorization: endpointAuthorization } : {}),
        },
        body: JSON.stringify(body),
        signal: req.signal,
        maxBytes: MAX_AUTH_RESPONSE_BYTES,
        // Non-200 bodies are never used: they are only drained.
        readBody: (status) => status === 200,
      });
    } catch (err) {
      if (!(err instanceof OutboundError)) throw err;
      if (err.kind === "too_large") {
        log.warn({ host, limit: MAX_AUTH_RESPONSE_BYTES }, "custom auth endpoint answered a body over the size limit");
        throw new AuthError("invalid_token", INVALID_FORMAT);
      }
      if (err.kind === "cancelled") {
        log.debug({ host }, "client went away during authentication");
        throw new IdentityUnavailableError("Authentication cancelled: the client closed the connection");
      }
      const timeout = err.kind === "timeout";
      log.warn({ host, ms: now() - started, err: err.detail }, timeout ? "custom auth endpoint timed out" : "custom auth endpoint unreachable");
      throw new IdentityUnavailableError(timeout ? "Authentication service timeout" : "Authentication service unavailable");
    }

    const status = res.status;
    if (status !== 200) {
      if (status >= 500) {
        log.warn({ host, status, ms: now() - started }, "custom auth endpoint failed");
        throw new IdentityUnavailableError("Authentication service error");
      }
      log.debug({ host, status, ms: now() - started }, "custom auth endpoint refused the credential");
      throw new AuthError("invalid_token", `Authentication failed: ${status}`);
    }
    const user = parseAuthResponse(res.body);
    if (!user) {
      log.warn({ host }, "custom auth endpoint answered 200 with an invalid body");
      throw new AuthError("invalid_token", INVALID_FORMAT);
    }
    log.debug({ host, principal: user.principal, ms: now() - started }, "authenticated");
    return user;
  }

  return {
    type: "custom",
    credential: "bearer",
    authRequiredMessage,
    authenticate,
    // A GET of the endpoint: any answer below 500 (a POST-only endpoint says
    // 405) proves it is up, costs no credential check and sends no key.
    ready: () => http.probe(url),
    async close() {
      await http.close();
    },
  };
}


function percentDecoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // a malformed escape is taken literally rather than failing start-up
  }
}


/**
 * The request's headers as the endpoint receives them: lower-case names,
 * repeated values joined with `", "` (RFC 9110 §5.3), and never the
 * `Authorization` header, whose credential travels as `api_key` instead.
 */
export function forwardedHeaders(
  headers: Readonly<Record<string, string | readonly string[] | undefined>>,
): Record<string, string> {
  // A null-prototype object: a header named `__proto__` stays a plain entry.
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [rawName, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const name = rawName.toLowerCase();
    if (name === "authorization") continue;
    const joined = typeof value === "string" ? value : value.join(", ");
    out[name] = name in out ? `${out[name]}, ${joined}` : joined;
  }
  return out;
}

/**
 * A query string parsed exactly as Python's `urllib.parse.parse_qs` does with
 * its defaults, since custom auth endpoints written for Llama Stack expect
 * that shape: `&`-separated fields, `+` is a space, percent-escapes decoded
 * as UTF-8 (invalid bytes become U+FFFD, malformed escapes stay as they are),
 * fields without `=` or with an empty value dropped, repeated names collected
 * in order.
 *
 * @example parsePythonQuery("a=1&a=2&b=x+y&c=") // { a: ["1", "2"], b: ["x y"] }
 */
export function parsePythonQuery(query: string): Record<string, string[]> {
  const params: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  if (query === "") return params;
  for (const field of query.split("&")) {
    const eq = field.indexOf("=");
    if (eq === -1 || eq === field.length - 1) continue;
    const name = unquotePlus(field.slice(0, eq));
    const value = unquotePlus(field.slice(eq + 1));
    (params[name] ??= []).push(value);
  }
  return params;
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

function hexValue(code: number): number {
  if (code >= 0x30 && code <= 0x39) return code - 0x30;
  if (code >= 0x41 && code <= 0x46) return code - 0x37;
  if (code >= 0x61 && code <= 0x66) return code - 0x57;
  return -1;
}

/** Python's `unquote_plus(s, errors="replace")`. */
function unquotePlus(text: string): string {
  const plain = text.replaceAll("+", " ");
  if (!plain.includes("%")) return plain;
  const bytes = Buffer.from(plain, "utf8");
  const out = Buffer.alloc(bytes.length);
  let n = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === 0x25 && i + 2 < bytes.length) {
      const hi = hexValue(bytes[i + 1]!);
      const lo = hexValue(bytes[i + 2]!);
      if (hi !== -1 && lo !== -1) {
        out[n++] = hi * 16 + lo;
        i += 2;
        continue;
      }
    }
    out[n++] = b;
  }
  return utf8.decode(out.subarray(0, n));
}




/**
 * `{principal, attributes?, message?}` as Llama Stack's `AuthResponse`
 * validates it, with two deliberate tightenings: an empty principal is
 * refused (it would merge every such caller into one identity for quotas and
 * ownership), and an attribute named `__proto__` is refused (it would become
 * the prototype of the user's attribute map, not an attribute).
 */
function parseAuthResponse(text: string): User | undefined {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isPlainObject(data)) return undefined;
  const { principal, attributes, message } = data;
  if (typeof principal !== "string" || principal.trim() === "") return undefined;
  if (message !== undefined && message !== null && typeof message !== "string") return undefined;
  if (attributes === undefined || attributes === null) return makeUser(principal);
  if (!isStringListRecord(attributes)) return undefined;
  return makeUser(principal, attributes);
}

/** True for `{"name": ["value", ...], ...}`: the only attribute shape a policy can use. */
export function isStringListRecord(value: unknown): value is Record<string, string[]> {
  if (!isPlainObject(value)) return false;
  for (const [name, values] of Object.entries(value)) {
    if (name === "__proto__") return false;
    if (!Array.isArray(values) || !values.every((v) => typeof v === "string")) return false;
  }
  return true;
}


