import { BlockList, isIP } from "node:net";
import type { ProviderConfig } from "../config/schema.js";
import { AuthError } from "../errors.js";
import { makeUser, type User } from "../user.js";
import { isStringListRecord } from "./custom.js";
import type { AuthProvider, AuthRequest } from "./types.js";

/** `server.auth.provider_config` of type `upstream_header`. */
export type UpstreamHeaderProviderConfig = Extract<ProviderConfig, { type: "upstream_header" }>;

/**
 * Who may assert identity when `trusted_proxies` is not set: the loopback
 * interface only. Believing every peer by default would let anyone who can
 * reach the port name any principal.
 */
export const DEFAULT_TRUSTED_PROXIES: readonly string[] = Object.freeze(["127.0.0.0/8", "::1"]);

/** Longest principal accepted from the header, in characters. */
export const MAX_PRINCIPAL_LENGTH = 1024;

/**
 * Trusts identity headers set by an authenticating proxy in front of
 * Tollgate (oauth2-proxy, an ingress with external auth, ...): the principal
 * from `principal_header`, attributes from the optional `attributes_header`
 * (a JSON object of string lists, `{"roles": ["admin"]}`).
 *
 * Anyone who can reach Tollgate directly can send these headers too, so
 * only peers in `trusted_proxies` (addresses or CIDRs) are believed; others
 * are refused with 401. Unset, that is the loopback interface only (a proxy
 * on the same host or in the same pod): fail closed, a proxy elsewhere must
 * be named. Throws at creation when an entry of `trusted_proxies` is not an
 * address or CIDR.
 *
 * @example createUpstreamHeaderProvider({ type: "upstream_header", principal_header: "x-user", trusted_proxies: ["10.0.0.0/8"] })
 */
export function createUpstreamHeaderProvider(config: UpstreamHeaderProviderConfig): AuthProvider {
  const principalHeader = config.principal_header.toLowerCase();
  const attributesHeader = config.attributes_header?.toLowerCase();
  const trusted = parseTrustedProxies(config.trusted_proxies ?? DEFAULT_TRUSTED_PROXIES);
  const authRequiredMessage = `Authentication required. Expected the ${principalHeader} header from the authenticating proxy`;
  const invalidAttributes = `Invalid ${attributesHeader} header: expected a JSON object of string lists`;

  async function authenticate(req: AuthRequest): Promise<User> {
    // Checked first: from an untrusted peer the headers mean nothing, present or not.
    if (!isTrusted(trusted, req.remoteAddress)) {
      throw new AuthError("invalid_token", "Identity headers are only accepted from a trusted proxy");
    }
    const principal = singleValue(req.headers[principalHeader])?.trim();
    if (!principal || principal.length > MAX_PRINCIPAL_LENGTH) {
      throw new AuthError("missing_credential", authRequiredMessage);
    }
    if (attributesHeader === undefined) return makeUser(principal);
    const raw = req.headers[attributesHeader];
    if (raw === undefined) return makeUser(principal);
    const text = singleValue(raw);
    if (text === undefined) throw new AuthError("invalid_token", invalidAttributes);
    let attributes: unknown;
    try {
      attributes = JSON.parse(text);
    } catch {
      throw new AuthError("invalid_token", invalidAttributes);
    }
    if (!isStringListRecord(attributes)) throw new AuthError("invalid_token", invalidAttributes);
    return makeUser(principal, attributes);
  }

  return {
    type: "upstream_header",
    credential: "headers",
    authRequiredMessage,
    authenticate,
    async close() {},
  };
}

/**
 * A header's one value. Two copies of an identity header (which adapters pass
 * as an array) mean the proxy appended instead of replacing, so one of them
 * may be the client's own: neither is believed.
 */
function singleValue(value: string | readonly string[] | undefined): string | undefined {
  if (typeof value === "string") return value;
  if (value !== undefined && value.length === 1) return value[0];
  return undefined;
}

// `::ffff:10.1.2.3` is how a dual-stack socket reports an IPv4 peer.
const IPV4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

function unmapIpv4(address: string): string {
  return IPV4_MAPPED.exec(address)?.[1] ?? address;
}

/**
 * Parses `trusted_proxies` (`10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`,
 * `::ffff:127.0.0.1`) into a `BlockList`. Throws an Error naming the first
 * entry that is not an IP address or CIDR.
 */
export function parseTrustedProxies(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const bad = () => new Error(`upstream_header trusted_proxies: ${JSON.stringify(entry)} is not an IP address or CIDR`);
    const slash = entry.indexOf("/");
    const written = (slash === -1 ? entry : entry.slice(0, slash)).trim();
    const address = unmapIpv4(written);
    const mapped = address !== written;
    const family = isIP(address);
    if (family === 0) throw bad();
    const type = family === 4 ? "ipv4" : "ipv6";
    if (slash === -1) {
      list.addAddress(address, type);
      continue;
    }
    const prefixText = entry.slice(slash + 1).trim();
    if (!/^\d+$/.test(prefixText)) throw bad();
    // `::ffff:10.0.0.0/104` is written in IPv6 prefix bits; the list holds it as IPv4.
    const prefix = Number(prefixText) - (mapped ? 96 : 0);
    if (prefix < 0 || prefix > (family === 4 ? 32 : 128)) throw bad();
    list.addSubnet(address, prefix, type);
  }
  return list;
}

function isTrusted(list: BlockList, remoteAddress: string | undefined): boolean {
  if (!remoteAddress) return false;
  // A zone index (`fe80::1%eth0`) names the interface, not the peer.
  const address = unmapIpv4(remoteAddress.replace(/%.*$/, ""));
  const family = isIP(address);
  if (family === 0) return false;
  return list.check(address, family === 4 ? "ipv4" : "ipv6");
}
