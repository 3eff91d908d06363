import { BadRequestError, HeadersTooLargeError } from "../core/errors.js";

/**
 * Which headers cross the gateway, in each direction.
 *
 * Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
 * message: a proxy must not pass them on. On top of those the gateway drops
 * what would let a client speak for someone else upstream (its own
 * `Authorization`, a spoofed principal header, forged `Forwarded`) and sets
 * those itself.
 */

/** Always hop-by-hop, whether or not `Connection` names them. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  // Not hop-by-hop in the RFC, but it governs this connection only (the
  // gateway already answered 100 Continue), and undici refuses to send it.
  "expect",
]);

/** Headers a client may never pass upstream: the gateway sets its own. */
const SET_BY_GATEWAY = new Set(["authorization", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]);

const NONE: ReadonlySet<string> = new Set();

/** The header names a `Connection` header lists (RFC 9110 §7.6.1), lower-case. */
function connectionOptions(values: readonly string[]): ReadonlySet<string> {
  // `keep-alive` alone (what clients send) names nothing beyond the hop-by-hop set.
  if (values.length === 0 || (values.length === 1 && /^\s*keep-alive\s*$/i.test(values[0]!))) return NONE;
  const names = new Set<string>();
  for (const value of values) {
    for (const token of value.split(",")) {
      const name = token.trim().toLowerCase();
      if (name) names.add(name);
    }
  }
  return names;
}

function isHopByHop(name: string, named: ReadonlySet<string>): boolean {
  return HOP_BY_HOP.has(name) || name.startsWith("proxy-") || named.has(name);
}

/** What the gateway knows about the client connection, for the forwarded headers. */
export interface ForwardedFor {
  /** The peer's address as the gateway's socket sees it. */
  readonly remoteAddress: string | undefined;
  /** `http` or `https`: how the client reached the gateway. */
  readonly proto: "http" | "https";
  /** The `Host` the client sent, if any. */
  readonly host: string | undefined;
}

export interface UpstreamHeaderOptions {
  /** Sent as `Authorization: Bearer <apiKey>` when set (`upstream.api_key`). */
  readonly apiKey?: string | undefined;
  /** `upstream.principal_header`: always removed from the client's headers; set to `principal` when both exist. */
  readonly principalHeader?: string | undefined;
  /** The authenticated principal; undefined on public paths and with authentication off. */
  readonly principal?: string | undefined;
  /** Sent as `X-Request-Id`, replacing the client's copies, when set. */
  readonly requestId?: string | undefined;
  readonly forwarded: ForwardedFor;
}

/**
 * Builds the headers sent upstream from the client's `rawHeaders` (Node's
 * flat `[name, value, ...]` list, which keeps duplicates and the client's
 * spelling). Returns the same flat shape, ready for undici.
 *
 * Dropped: hop-by-hop headers and those `Connection` names, `Host` (undici
 * sets the upstream's), `Expect`, the client's `Authorization` (its
 * credential is for Tollgate, never for the upstream), any client-sent
 * `principalHeader` (else a client could claim to be someone else) and the
 * client's `X-Forwarded-Proto`/`-Host` and `Forwarded`, and its `X-Request-Id`
 * when the gateway sends its own.
 * Added: `Authorization: Bearer <apiKey>`, `<principalHeader>: <principal>`,
 * `X-Request-Id: <requestId>`,
 * `X-Forwarded-For` (the client's list, if any, plus the peer address, as
 * nginx's `$proxy_add_x_forwarded_for`: the last entry is the one the gateway
 * saw), `X-Forwarded-Proto` and `X-Forwarded-Host`.
 *
 * @example upstreamRequestHeaders(req.rawHeaders, { apiKey: "sk-1", forwarded: { remoteAddress: "127.0.0.1", proto: "http", host: "gw:8321" } })
 */
export function upstreamRequestHeaders(rawHeaders: readonly string[], options: UpstreamHeaderOptions): string[] {
  const connectionValues: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === "connection") connectionValues.push(rawHeaders[i + 1] ?? "");
  }
  const named = connectionOptions(connectionValues);
  const principalHeader = options.principalHeader?.toLowerCase();

  const out: string[] = [];
  const forwardedFor: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1] ?? "";
    const lower = name.toLowerCase();
    if (lower === "x-forwarded-for") {
      forwardedFor.push(value);
      continue;
    }
    if (isHopByHop(lower, named) || SET_BY_GATEWAY.has(lower) || lower === principalHeader) continue;
    if (lower === "x-request-id" && options.requestId !== undefined) continue;
    out.push(name, value);
  }

  if (options.apiKey !== undefined) out.push("authorization", `Bearer ${options.apiKey}`);
  if (principalHeader !== undefined && options.principal !== undefined) out.push(principalHeader, options.principal);
  if (options.requestId !== undefined) out.push("x-request-id", options.requestId);
  const { remoteAddress, proto, host } = options.forwarded;
  if (remoteAddress !== undefined) forwardedFor.push(remoteAddress);
  if (forwardedFor.length > 0) out.push("x-forwarded-for", forwardedFor.join(", "));
  out.push("x-forwarded-proto", proto);
  if (host !== undefined) out.push("x-forwarded-host", host);
  return out;
}

/**
 * The upstream's response headers minus hop-by-hop ones (and those its
 * `Connection` names), ready for the client. Multi-valued headers
 * (`set-cookie`) stay arrays.
 */
export function downstreamResponseHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
): Record<string, string | string[]> {
  const connection = headers.connection;
  const named = connectionOptions(connection === undefined ? [] : typeof connection === "string" ? [connection] : connection);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (value === undefined || isHopByHop(lower, named)) continue;
    out[lower] = value;
  }
  return out;
}

/**
 * Checks a request's header fields before anything reads them (Node's flat
 * `rawHeaders`, every field as it came):
 *
 * - more than `maxCount` fields: 431 (RFC 6585 §5). Node silently drops
 *   fields past its own `maxHeadersCount` (2,000 by default), which hid a
 *   `Content-Length` from the body limit and pushed the gateway's own
 *   headers off at the upstream; the gateway raises Node's count past any
 *   accepted value and refuses here instead, as Envoy
 *   (`max_request_headers_count`) and Apache (`LimitRequestFields`) do.
 * - more than one `Host`: 400, as RFC 9112 §3.2 requires of a server (and
 *   nginx answers): two hosts are a request two parties would read apart.
 */
export function checkRequestHeaders(rawHeaders: readonly string[], maxCount: number): void {
  if (rawHeaders.length / 2 > maxCount) throw new HeadersTooLargeError();
  let hosts = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === "host" && ++hosts > 1) throw new BadRequestError("Duplicate Host header", "duplicate_host");
  }
}
