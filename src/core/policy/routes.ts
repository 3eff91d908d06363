import { ForbiddenError } from "../errors.js";
import type { User } from "../user.js";
import { allHold } from "./conditions.js";
import { NO_MATCH, type CompiledRoutePolicy, type CompiledScopeRule, type Decision, type PathMatcher } from "./compile.js";

/**
 * The form of a canonical path that route rules, required scopes and the
 * route catalog match against: lower-case. Upstream servers differ in
 * whether `/V1/Files` reaches the `/v1/files` handler; matching the most
 * liberal reading means neither a `forbid` nor a required scope can be
 * stepped around that way (a `permit` only widens to spellings of the same
 * route). `;` path parameters never get here: the canonical path refuses them.
 *
 * @example routeMatchPath("/V1/Files/abc") // "/v1/files/abc"
 */
export function routeMatchPath(canonical: string): string {
  return canonical.toLowerCase();
}

/** Does a compiled route pattern match a {@link routeMatchPath}? */
export function pathMatches(m: PathMatcher, path: string): boolean {
  switch (m.kind) {
    case "any":
      return true;
    case "exact":
      return m.path === path;
    case "prefix":
      return path.startsWith(m.prefix);
    case "regex":
      return m.re.test(path);
  }
}

/**
 * The reference's `route_policy`: first matching rule decides; a configured
 * policy with no match denies; an empty policy allows. Without a user
 * (`server.auth` with a route_policy and no provider, as Llama Stack 0.7
 * allows) a rule with conditions never applies and one without decides, as
 * in the reference. `path` is {@link routeMatchPath} of the canonical path.
 */
export function evaluateRoute(policy: CompiledRoutePolicy, user: User | undefined, path: string): Decision {
  if (policy.rules.length === 0) return NO_ROUTE_POLICY;
  const rules = policy.rules;
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    let matched = false;
    for (let j = 0; j < rule.paths.length && !matched; j++) matched = pathMatches(rule.paths[j]!, path);
    if (!matched) continue;
    if (user === undefined) {
      if (rule.conditions.length === 0) return rule.decision;
      continue;
    }
    const hold = allHold(rule.conditions, user, undefined);
    if (rule.unless ? !hold : hold) return rule.decision;
  }
  return NO_MATCH;
}

/** An empty route policy allows every path (the reference's `is_route_allowed`). */
const NO_ROUTE_POLICY: Decision = Object.freeze({ allowed: true, rule: -1, description: undefined, source: "no_policy" });

/**
 * Throws 403 `Access denied: user does not have required scope: <scope>`
 * (the reference's message) when a `required_scopes` pattern matches and the
 * user's `scopes` attribute lacks its scope. Every matching pattern's scope
 * is required. No user (authentication off): nothing required.
 */
export function checkRequiredScopes(rules: readonly CompiledScopeRule[], user: User | undefined, path: string): void {
  if (user === undefined) return;
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    if (!pathMatches(rule.matcher, path)) continue;
    const scopes = Object.prototype.hasOwnProperty.call(user.attributes, "scopes") ? user.attributes.scopes : undefined;
    if (!Array.isArray(scopes) || !scopes.includes(rule.scope)) {
      throw new ForbiddenError(`Access denied: user does not have required scope: ${rule.scope}`, "missing_scope");
    }
  }
}
