import { BadRequestError } from "./errors.js";

/**
 * A request target split into its canonical path and its raw query string.
 * Every stage matches on `path`, and the gateway forwards `path` (not what the
 * client sent) so that the upstream sees exactly what the checks saw.
 */
export interface CanonicalTarget {
  /** Canonical path: starts with `/`, no empty, `.` or `..` segments, no trailing `/`. */
  readonly path: string;
  /** The query string as sent, without the leading `?` ("" when absent). */
  readonly query: string;
}

const HEX = "0123456789ABCDEF";
// RFC 3986 §2.3 unreserved characters: decoding them never changes meaning.
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
// pchar minus "%" plus "/": what may appear literally in a path (RFC 3986 §3.3).
const PATH_CHAR = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/]$/;
// Encoded characters that upstream servers commonly decode into path syntax
// (`/`, `\`) or that truncate strings (NUL). Accepting them would let a path
// look one way to our checks and another way to the upstream, so they are refused.
const FORBIDDEN_ENCODED = new Set(["%2F", "%5C", "%00"]);
// `;` starts a path parameter for some servers (Tomcat, Spring, Jetty:
// `/v1/models/..;/fine_tuning/jobs` is `/v1/fine_tuning/jobs` there) and is a
// plain character for others. No route of an AI API holds one, so a path
// with `;`, raw or encoded, is refused before any check could read it one way
// and the upstream another (as nginx-fronted Tomcat advisories recommend).
const SEMICOLON = "%3B";

function invalid(reason: string): never {
  throw new BadRequestError(`Invalid request path: ${reason}`, "invalid_path");
}

/**
 * Normalises a request target (`/v1//models/./x/?a=1`) into its canonical
 * path (`/v1/models/x`) and query (`a=1`):
 * percent-decoding of unreserved characters (and upper-case hex for the rest),
 * `//` collapsed, `.` and `..` segments resolved (RFC 3986 §5.2.4), trailing
 * `/` removed. Throws a 400 {@link BadRequestError} for anything that cannot be
 * normalised safely: not origin-form, malformed `%`, encoded `/` `\` or NUL,
 * `;` raw or encoded, characters outside RFC 3986, or `..` above the root.
 *
 * @example canonicalTarget("/v1/%6Dodels/../health/") // { path: "/v1/health", query: "" }
 */
export function canonicalTarget(rawTarget: string): CanonicalTarget {
  const q = rawTarget.indexOf("?");
  const rawPath = q === -1 ? rawTarget : rawTarget.slice(0, q);
  const query = q === -1 ? "" : rawTarget.slice(q + 1);
  if (rawPath[0] !== "/") invalid("expected an absolute path");

  let decoded = "";
  for (let i = 0; i < rawPath.length; i++) {
    const ch = rawPath[i]!;
    if (ch === "%") {
      const hex = rawPath.slice(i + 1, i + 3).toUpperCase();
      if (hex.length !== 2 || !HEX.includes(hex[0]!) || !HEX.includes(hex[1]!)) invalid("malformed percent-encoding");
      const encoded = `%${hex}`;
      if (FORBIDDEN_ENCODED.has(encoded)) invalid("encoded '/', '\\' or NUL is not allowed");
      if (encoded === SEMICOLON) invalid("';' is not allowed in a path");
      const char = String.fromCharCode(parseInt(hex, 16));
      decoded += UNRESERVED.test(char) ? char : encoded;
      i += 2;
    } else if (ch === ";") {
      invalid("';' is not allowed in a path");
    } else if (PATH_CHAR.test(ch)) {
      decoded += ch;
    } else {
      invalid("character not allowed in a path");
    }
  }

  const segments: string[] = [];
  for (const segment of decoded.split("/")) {
    if (segment === "" || segment === ".") continue;
    if (segment === "..") {
      if (segments.length === 0) invalid("'..' above the root");
      segments.pop();
      continue;
    }
    segments.push(segment);
  }
  return { path: `/${segments.join("/")}`, query };
}

/** Canonical form of a configured path (public paths, route patterns); throws on an invalid one. */
export function canonicalPath(path: string): string {
  return canonicalTarget(path).path;
}
