import { createHash } from "node:crypto";
import { BlockList, isIP } from "node:net";
import type { User } from "../user.js";

/**
 * Who a quota is counted for.
 *
 * An authenticated caller is its principal: every token of one principal
 * shares one quota. The reference keys quotas by the raw bearer token and
 * stores it, so a leaked store leaks credentials and a caller with two
 * tokens gets two quotas; Tollgate stores only a hash of the principal.
 * An anonymous caller is its connection's address, taken from
 * `X-Forwarded-For` / `Forwarded` only when the peer is a trusted proxy.
 */

/** `u_<hash>` for a principal, `a_<hash>` for an anonymous address: what the store sees. */
export function clientKey(user: User | undefined, address: string | undefined): string {
  if (user) return `u_${digest(`principal\0${user.principal}`)}`;
  return `a_${digest(`address\0${address ?? "unknown"}`)}`;
}

function digest(text: string): string {
  // 128 bits of SHA-256: collisions are not a practical concern, keys stay short.
  return createHash("sha256").update(text).digest("base64url").slice(0, 22);
}

const IPV4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/** `::ffff:10.0.0.1` → `10.0.0.1`; drops a zone index (`fe80::1%eth0`). */
export function normalizeAddress(address: string): string {
  const bare = address.trim().replace(/%.*$/, "");
  return IPV4_MAPPED.exec(bare)?.[1] ?? bare.toLowerCase();
}

function isTrusted(list: BlockList | undefined, address: string): boolean {
  if (!list) return false;
  const family = isIP(address);
  if (family === 0) return false;
  return list.check(address, family === 4 ? "ipv4" : "ipv6");
}

/** `for=` values of a `Forwarded` header (RFC 7239), in order: `"[2001:db8::1]:4711"` → `2001:db8::1`. */
function forwardedFor(values: readonly string[]): string[] {
  const out: string[] = [];
  for (const value of values) {
    for (const element of value.split(",")) {
      for (const pair of element.split(";")) {
        const eq = pair.indexOf("=");
        if (eq === -1 || pair.slice(0, eq).trim().toLowerCase() !== "for") continue;
        let node = pair.slice(eq + 1).trim().replace(/^"|"$/g, "");
        if (node.startsWith("[")) node = node.slice(1, node.indexOf("]") === -1 ? undefined : node.indexOf("]"));
        else if (node.split(":").length === 2) node = node.slice(0, node.indexOf(":")); // IPv4 with a port
        out.push(node);
      }
    }
  }
  return out;
}

function headerValues(value: string | readonly string[] | undefined): string[] {
  if (value === undefined) return [];
  return typeof value === "string" ? [value] : [...value];
}

/**
 * The anonymous client's address. The peer's own address, unless the peer is
 * one of `trustedProxies`: then the forwarding chain (`Forwarded`, else
 * `X-Forwarded-For`) is walked from the right, skipping trusted proxies, and
 * the first address not trusted is the client. A client can prepend anything
 * to the chain; only the entries its trusted proxies appended are believed.
 *
 * @example
 * anonymousAddress("10.0.0.2", { "x-forwarded-for": "203.0.113.9, 10.0.0.3" }, parseTrustedProxies(["10.0.0.0/8"])); // "203.0.113.9"
 */
export function anonymousAddress(
  peer: string | undefined,
  headers: Readonly<Record<string, string | readonly string[] | undefined>>,
  trustedProxies: BlockList | undefined,
): string | undefined {
  if (peer === undefined) return undefined;
  const address = normalizeAddress(peer);
  if (!isTrusted(trustedProxies, address)) return address;
  const forwarded = headerValues(headers.forwarded);
  const chain =
    forwarded.length > 0
      ? forwardedFor(forwarded)
      : headerValues(headers["x-forwarded-for"]).flatMap((v) => v.split(","));
  let client = address;
  for (let i = chain.length - 1; i >= 0; i--) {
    const hop = normalizeAddress(chain[i]!);
    if (isIP(hop) === 0) break; // "unknown", an obfuscated node: stop at the last address we could check
    client = hop;
    if (!isTrusted(trustedProxies, hop)) break;
  }
  return client;
}
