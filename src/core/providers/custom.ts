import { readFileSync } from "node:fs";
import { Agent, request } from "undici";
import type { ProviderConfig } from "../config/schema.js";
import { AuthError, IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { makeUser, type User } from "../user.js";
import type { AuthProvider, AuthRequest } from "./types.js";

/** `server.auth.provider_config` of type `custom`, defaults filled in. */
export type CustomProviderConfig = Extract<ProviderConfig, { type: "custom" }>;

export interface CustomProviderDeps {
  log: Logger;
  /** Clock in milliseconds, for the latency in log lines; tests pass a fake one. */
  now?: () => number;
}

/**
 * Largest response body read from the endpoint. A principal and its
 * attributes fit in a few KiB; anything near this is a broken or hostile
 * endpoint, and reading it unbounded would let it exhaust our memory.
 */
export const MAX_AUTH_RESPONSE_BYTES = 1024 * 1024;

// Non-200 bodies are only drained so the connection can be reused; their
// content is never used, so a small limit is enough.
const MAX_DRAINED_BYTES = 64 * 1024;

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

class ResponseTooLargeError extends Error {}

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

  const url = parseEndpoint(endpoint);
  // Credentials in the endpoint URL (`https://user:pass@auth/validate`) are
  // sent as HTTP Basic, as the reference's HTTP client does; undici would
  // silently drop them.
  const endpointAuthorization = url.username || url.password
    ? `Basic ${Buffer.from(`${percentDecoded(url.username)}:${percentDecoded(url.password)}`).toString("base64")}`
    : undefined;
  url.username = "";
  url.password = "";
  // Only the host ever appears in messages and logs: the endpoint URL may
  // carry credentials or a secret path.
  const host = url.host;
  const authRequiredMessage = host
    ? `Authentication required. Please provide your API key as a Bearer token (validated by ${host})`
    : "Authentication required. Please provide your API key as a Bearer token in the Authorization header";

  const ca = config.tls_cafile === undefined ? undefined : readCaFile(config.tls_cafile);
  const verify = config.verify_tls || ca !== undefined;
  if (!verify) log.warn({ host }, "TLS certificate verification is off for the custom auth endpoint (verify_tls: false)");

  // One connection pool per provider, closed with it: no hidden global agent.
  const agent = new Agent({
    connect: { rejectUnauthorized: verify, ...(ca !== undefined ? { ca } : {}) },
    connectTimeout: timeoutMs,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });

  async function authenticate(req: AuthRequest): Promise<User> {
    if (req.token === undefined) throw new AuthError("missing_credential", authRequiredMessage);
    const body: CustomAuthRequestBody = {
      api_key: req.token,
      request: { path: req.path, headers: forwardedHeaders(req.headers), params: parsePythonQuery(req.query) },
    };

    // One deadline for the whole exchange (connect, headers and body), and the
    // client's own signal: a caller that went away stops costing us a request.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const onClientAbort = () => controller.abort();
    if (req.signal?.aborted) controller.abort();
    else req.signal?.addEventListener("abort", onClientAbort, { once: true });

    const started = now();
    const unavailable = (err: unknown): IdentityUnavailableError => {
      const timeout = timedOut || isUndiciTimeout(err);
      if (req.signal?.aborted && !timedOut) {
        log.debug({ host }, "client went away during authentication");
        return new IdentityUnavailableError("Authentication cancelled: the client closed the connection");
      }
      log.warn({ host, ms: now() - started, err: describeError(err) }, timeout ? "custom auth endpoint timed out" : "custom auth endpoint unreachable");
      return new IdentityUnavailableError(timeout ? "Authentication service timeout" : "Authentication service unavailable");
    };

    try {
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(url, {
          method: "POST",
          dispatcher: agent,
          headers: {
            "content-type": "application/json",
            accept: "application/json",
            ...(endpointAuthorization ? { authorization: endpointAuthorization } : {}),
          },
          body: JSON.stringify(body),
          signal: controller.signal,
        });
      } catch (err) {
        throw unavailable(err);
      }

      const status = res.statusCode;
      if (status !== 200) {
        await res.body.dump({ limit: MAX_DRAINED_BYTES }).catch(() => undefined);
        if (status >= 500) {
          log.warn({ host, status, ms: now() - started }, "custom auth endpoint failed");
          throw new IdentityUnavailableError("Authentication service error");
        }
        log.debug({ host, status, ms: now() - started }, "custom auth endpoint refused the credential");
        throw new AuthError("invalid_token", `Authentication failed: ${status}`);
      }

      let text: string;
      try {
        text = await readCapped(res.body, contentLength(res.headers["content-length"]), MAX_AUTH_RESPONSE_BYTES);
      } catch (err) {
        if (err instanceof ResponseTooLargeError) {
          log.warn({ host, limit: MAX_AUTH_RESPONSE_BYTES }, "custom auth endpoint answered a body over the size limit");
          throw new AuthError("invalid_token", INVALID_FORMAT);
        }
        throw unavailable(err);
      }
      const user = parseAuthResponse(text);
      if (!user) {
        log.warn({ host }, "custom auth endpoint answered 200 with an invalid body");
        throw new AuthError("invalid_token", INVALID_FORMAT);
      }
      log.debug({ host, principal: user.principal, ms: now() - started }, "authenticated");
      return user;
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener("abort", onClientAbort);
    }
  }

  return {
    type: "custom",
    credential: "bearer",
    authRequiredMessage,
    authenticate,
    async close() {
      await agent.close();
    },
  };
}

function parseEndpoint(endpoint: string): URL {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new Error("custom auth provider: endpoint is not a valid URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error("custom auth provider: endpoint must be an http:// or https:// URL");
  }
  return url;
}

function percentDecoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // a malformed escape is taken literally rather than failing start-up
  }
}

function readCaFile(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`custom auth provider: cannot read tls_cafile ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
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

function contentLength(value: string | string[] | undefined): number | undefined {
  if (typeof value !== "string" || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

async function readCapped(body: AsyncIterable<Buffer> & { destroy(): void }, declared: number | undefined, max: number): Promise<string> {
  if (declared !== undefined && declared > max) {
    body.destroy();
    throw new ResponseTooLargeError();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) {
      body.destroy();
      throw new ResponseTooLargeError();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size).toString("utf8");
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
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

function isUndiciTimeout(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "UND_ERR_CONNECT_TIMEOUT" || code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT";
}

/** What is safe to log about a transport failure: its code and message, which carry no credential. */
function describeError(err: unknown): { code?: string; message: string } {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    const cause = (err as { cause?: unknown }).cause;
    const causeCode = cause instanceof Error ? (cause as NodeJS.ErrnoException).code : undefined;
    return { ...((code ?? causeCode) ? { code: code ?? causeCode } : {}), message: err.message };
  }
  return { message: String(err) };
}
