/**
 * Claims → attributes, as Llama Stack's `get_attributes_from_claims`, with
 * dot paths into nested claims.
 */

/** Llama Stack's default `claims_mapping` for `oauth2_token`, entry for entry. */
export const DEFAULT_OAUTH2_CLAIMS_MAPPING: Readonly<Record<string, string>> = Object.freeze({
  sub: "roles",
  username: "roles",
  groups: "teams",
  team: "teams",
  project: "projects",
  tenant: "namespaces",
  namespace: "namespaces",
});

/** Llama Stack's default mapping for `github_token`. */
export const DEFAULT_GITHUB_CLAIMS_MAPPING: Readonly<Record<string, string>> = Object.freeze({
  login: "roles",
  organizations: "teams",
});

/** Llama Stack's default mapping for `kubernetes` (of the review's `status.userInfo`). */
export const DEFAULT_KUBERNETES_CLAIMS_MAPPING: Readonly<Record<string, string>> = Object.freeze({
  username: "roles",
  groups: "roles",
});

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The value at `path` in `claims`: the literal key first (a claim may be
 * named `https://example.com/roles`), then a dot path into nested objects
 * (`resource_access.app.roles`), where a segment may itself contain dots
 * (`kubernetes.io.namespace` reads `{"kubernetes.io": {"namespace": ...}}`).
 * Only own properties are read, so `__proto__` or `constructor` never
 * resolve to something inherited.
 *
 * @example claimAt({ resource_access: { app: { roles: ["a"] } } }, "resource_access.app.roles") // ["a"]
 */
export function claimAt(claims: Record<string, unknown>, path: string): unknown {
  if (Object.hasOwn(claims, path)) return claims[path];
  for (let dot = path.indexOf("."); dot !== -1; dot = path.indexOf(".", dot + 1)) {
    const head = path.slice(0, dot);
    if (!Object.hasOwn(claims, head)) continue;
    const inner = claims[head];
    if (!isRecord(inner)) continue;
    const found = claimAt(inner, path.slice(dot + 1));
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * Builds attributes from claims with a `claims_mapping` (claim path →
 * attribute name), as the reference does: a string claim is split on
 * whitespace (`"scope": "read write"` → `["read", "write"]`), a list claim is
 * kept (its string members; others dropped), any other type (number,
 * object, boolean) is ignored. Several claims mapping to one attribute are
 * concatenated in mapping order.
 *
 * @example attributesFromClaims({ sub: "u1", groups: ["a", "b"] }, { sub: "roles", groups: "teams" })
 * // { roles: ["u1"], teams: ["a", "b"] }
 */
export function attributesFromClaims(
  claims: Record<string, unknown>,
  mapping: Readonly<Record<string, string>>,
): Record<string, string[]> {
  const attributes: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (const [path, attribute] of Object.entries(mapping)) {
    const claim = claimAt(claims, path);
    let values: string[];
    if (typeof claim === "string") values = claim.split(/\s+/).filter((v) => v !== "");
    else if (Array.isArray(claim)) values = claim.filter((v): v is string => typeof v === "string");
    else continue;
    const existing = attributes[attribute];
    if (existing) existing.push(...values);
    else Object.defineProperty(attributes, attribute, { value: values, enumerable: true, writable: true });
  }
  return attributes;
}
