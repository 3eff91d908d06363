import { canonicalPath } from "../path.js";
import { parseCondition, type Condition } from "./conditions.js";
import { ACTIONS, type AccessRuleInput, type Action, type ConditionsInput, type RouteRuleInput } from "./rules.js";

/**
 * Compiles the `access_policy`, `route_policy` and `required_scopes` of
 * `server.auth` once, at start-up: patterns are split or compiled to anchored
 * regexes, conditions parsed, and each rule's decision pre-built, so that
 * evaluation (evaluate.ts, routes.ts) allocates nothing per request.
 *
 * Anything invalid is refused with its position (`access_policy[2].when`) and
 * the reason, never skipped: a rule that silently never matched could be a
 * `forbid` that silently never forbids.
 */

export { ACTIONS } from "./rules.js";
export type { AccessRuleInput, Action, ConditionsInput, RouteRuleInput } from "./rules.js";

/** The outcome of an evaluation; pre-built per rule, never allocated per request. */
export interface Decision {
  readonly allowed: boolean;
  /** Index of the deciding rule in its policy (in the default policy when `source` is `default_policy`); -1 when none. */
  readonly rule: number;
  readonly description: string | undefined;
  /** `rule`: a configured rule decided; `default_policy`: the built-in one; `no_match`: nothing matched (denied); `no_user`: authentication is off (allowed); `no_policy`: an empty route policy (allowed). */
  readonly source: "rule" | "default_policy" | "no_match" | "no_user" | "no_policy";
}

export const NO_MATCH: Decision = Object.freeze({ allowed: false, rule: -1, description: undefined, source: "no_match" });
export const NO_USER: Decision = Object.freeze({ allowed: true, rule: -1, description: undefined, source: "no_user" });

export type ResourceMatcher =
  | { readonly kind: "any" }
  | { readonly kind: "exact"; readonly key: string }
  | { readonly kind: "type"; readonly prefix: string }
  | { readonly kind: "regex"; readonly re: RegExp };

export type PathMatcher =
  | { readonly kind: "any" }
  | { readonly kind: "exact"; readonly path: string }
  | { readonly kind: "prefix"; readonly prefix: string }
  | { readonly kind: "regex"; readonly re: RegExp };

interface CompiledRuleBase {
  readonly index: number;
  readonly forbid: boolean;
  readonly conditions: readonly Condition[];
  /** True for `unless`: the rule applies unless all conditions hold. */
  readonly unless: boolean;
  readonly decision: Decision;
}

export interface CompiledAccessRule extends CompiledRuleBase {
  readonly principal: string | undefined;
  /** Bit per action, in {@link ACTIONS} order. */
  readonly actions: number;
  readonly resource: ResourceMatcher;
}

export interface CompiledRouteRule extends CompiledRuleBase {
  readonly paths: readonly PathMatcher[];
}

export interface CompiledAccessPolicy {
  readonly rules: readonly CompiledAccessRule[];
  /** True when the configured policy was empty and the reference's default applies. */
  readonly isDefault: boolean;
}

export interface CompiledRoutePolicy {
  readonly rules: readonly CompiledRouteRule[];
}

export interface CompiledScopeRule {
  readonly pattern: string;
  readonly matcher: PathMatcher;
  readonly scope: string;
}

/** One reason a policy was refused, at a path relative to the policy (`[2, "when"]`). */
export interface PolicyIssue {
  readonly path: (string | number)[];
  readonly message: string;
}

/** A policy that cannot be compiled; `issues` name each rule's position and the reason. */
export class PolicyError extends Error {
  readonly code = "ERR_INVALID_POLICY";
  readonly issues: readonly PolicyIssue[];
  constructor(name: string, issues: PolicyIssue[]) {
    super(`invalid ${name}: ${issues.map((i) => `${name}${formatIssuePath(i.path)}: ${i.message}`).join("; ")}`);
    this.name = "PolicyError";
    this.issues = issues;
  }
}

function formatIssuePath(path: readonly (string | number)[]): string {
  return path.map((p) => (typeof p === "number" ? `[${p}]` : `.${p}`)).join("");
}

/** Bit of one action in {@link CompiledAccessRule.actions}. */
export function actionBit(action: Action): number {
  return 1 << ACTIONS.indexOf(action);
}

function list<T>(v: T | readonly T[] | undefined): readonly T[] {
  return v === undefined ? [] : Array.isArray(v) ? (v as readonly T[]) : [v as T];
}

/**
 * Compiles a user regex anchored at both ends: `regex:model::llama.*`
 * matches the whole key, never a substring of it (`xmodel::llama-1`).
 */
function anchored(source: string, flags: string, at: (string | number)[], issues: PolicyIssue[]): RegExp | undefined {
  try {
    return new RegExp(`^(?:${source})$`, flags);
  } catch (err) {
    issues.push({ path: at, message: `invalid regular expression: ${(err as Error).message}` });
    return undefined;
  }
}

/** Parses a resource pattern: `type::id`, `type::*` or `regex:<expr>` matched against the whole `type::id`. */
export function compileResourcePattern(pattern: string, at: (string | number)[], issues: PolicyIssue[]): ResourceMatcher {
  if (pattern.startsWith("regex:")) {
    const re = anchored(pattern.slice(6), "", at, issues);
    return re ? { kind: "regex", re } : { kind: "any" };
  }
  const sep = pattern.indexOf("::");
  if (sep <= 0 || sep + 2 === pattern.length) {
    issues.push({ path: at, message: `expected a resource pattern type::id, type::* or regex:..., got ${JSON.stringify(pattern)}` });
    return { kind: "any" };
  }
  if (pattern.endsWith("::*") && sep === pattern.length - 3) return { kind: "type", prefix: pattern.slice(0, -1) };
  return { kind: "exact", key: pattern };
}

/** Canonical, lower-case form of a configured path; a trailing `/` before `*` is kept. */
function configuredPath(path: string, at: (string | number)[], issues: PolicyIssue[], keepSlash = false): string {
  const slash = keepSlash && path.endsWith("/") && path.length > 1;
  try {
    const canon = canonicalPath(path).toLowerCase();
    return slash && canon !== "/" ? `${canon}/` : canon;
  } catch {
    issues.push({ path: at, message: `expected an absolute path such as /v1/files, got ${JSON.stringify(path)}` });
    return path;
  }
}

/**
 * Parses a route pattern: `*` (every path), `/v1/files*` (prefix),
 * `/v1/models` (exact) or `regex:<expr>` (whole path, case-insensitive).
 * Matched against {@link routeMatchPath} of the canonical path.
 */
export function compilePathPattern(pattern: string, at: (string | number)[], issues: PolicyIssue[]): PathMatcher {
  if (pattern === "*") return { kind: "any" };
  if (pattern.startsWith("regex:")) {
    const re = anchored(pattern.slice(6), "i", at, issues);
    return re ? { kind: "regex", re } : { kind: "any" };
  }
  if (pattern.endsWith("*")) return { kind: "prefix", prefix: configuredPath(pattern.slice(0, -1), at, issues, true) };
  return { kind: "exact", path: configuredPath(pattern, at, issues) };
}

function compileConditions(rule: { when?: ConditionsInput | undefined; unless?: ConditionsInput | undefined }, at: (string | number)[], issues: PolicyIssue[]): { conditions: Condition[]; unless: boolean } {
  if (rule.when !== undefined && rule.unless !== undefined) {
    issues.push({ path: [...at, "unless"], message: "a rule has either when or unless, not both" });
  }
  const unless = rule.when === undefined && rule.unless !== undefined;
  const key = unless ? "unless" : "when";
  const raw = unless ? rule.unless : rule.when;
  const conditions: Condition[] = [];
  const texts = list(raw);
  texts.forEach((text, i) => {
    const where = Array.isArray(raw) ? [...at, key, i] : [...at, key];
    const parsed = typeof text === "string" ? parseCondition(text) : "expected a condition string";
    if (typeof parsed === "string") issues.push({ path: where, message: parsed });
    else conditions.push(parsed);
  });
  return { conditions, unless };
}

function effectOf<T>(rule: { permit?: T | undefined; forbid?: T | undefined }, at: (string | number)[], issues: PolicyIssue[]): { forbid: boolean; scope: T | undefined } {
  if ((rule.permit === undefined) === (rule.forbid === undefined)) {
    issues.push({ path: at, message: "a rule has exactly one of permit or forbid" });
  }
  return rule.forbid !== undefined ? { forbid: true, scope: rule.forbid } : { forbid: false, scope: rule.permit };
}

function decisionOf(index: number, forbid: boolean, description: string | undefined, source: Decision["source"]): Decision {
  return Object.freeze({ allowed: !forbid, rule: index, description, source });
}

/**
 * Compiles `access_policy`. Throws {@link PolicyError} naming every invalid rule.
 *
 * @example compileAccessPolicy([{ permit: { actions: ["read"], resource: "model::*" }, when: "user with ml in teams" }])
 */
export function compileAccessPolicy(rules: readonly AccessRuleInput[], name = "access_policy"): CompiledAccessPolicy {
  return once(rules, () => buildAccessPolicy(rules, name));
}

function buildAccessPolicy(rules: readonly AccessRuleInput[], name: string): CompiledAccessPolicy {
  const issues: PolicyIssue[] = [];
  const compiled = rules.map((rule, index): CompiledAccessRule => {
    const at = [index];
    const { forbid, scope } = effectOf(rule, at, issues);
    const scopeKey = forbid ? "forbid" : "permit";
    let actions = 0;
    for (const action of list(scope?.actions)) {
      if (!(ACTIONS as readonly string[]).includes(action)) {
        issues.push({ path: [index, scopeKey, "actions"], message: `unknown action ${JSON.stringify(action)}; expected ${ACTIONS.join(", ")}` });
      } else actions |= actionBit(action);
    }
    const resource: ResourceMatcher =
      scope?.resource === undefined ? { kind: "any" } : compileResourcePattern(scope.resource, [index, scopeKey, "resource"], issues);
    const { conditions, unless } = compileConditions(rule, at, issues);
    return {
      index,
      forbid,
      principal: scope?.principal,
      actions,
      resource,
      conditions,
      unless,
      decision: decisionOf(index, forbid, rule.description, "rule"),
    };
  });
  if (issues.length > 0) throw new PolicyError(name, issues);
  if (compiled.length === 0) return DEFAULT_POLICY;
  return Object.freeze({ rules: Object.freeze(compiled), isDefault: false });
}

/** Compiles `route_policy`. Throws {@link PolicyError} naming every invalid rule. */
export function compileRoutePolicy(rules: readonly RouteRuleInput[], name = "route_policy"): CompiledRoutePolicy {
  return once(rules, () => buildRoutePolicy(rules, name));
}

function buildRoutePolicy(rules: readonly RouteRuleInput[], name: string): CompiledRoutePolicy {
  const issues: PolicyIssue[] = [];
  const compiled = rules.map((rule, index): CompiledRouteRule => {
    const at = [index];
    const { forbid, scope } = effectOf(rule, at, issues);
    const key = forbid ? "forbid" : "permit";
    const raw = scope?.paths;
    const paths = list(raw).map((p, i) => compilePathPattern(p, Array.isArray(raw) ? [index, key, "paths", i] : [index, key, "paths"], issues));
    if (paths.length === 0 && scope !== undefined) issues.push({ path: [index, key, "paths"], message: "at least one path" });
    const { conditions, unless } = compileConditions(rule, at, issues);
    return { index, forbid, paths, conditions, unless, decision: decisionOf(index, forbid, rule.description, "rule") };
  });
  if (issues.length > 0) throw new PolicyError(name, issues);
  return Object.freeze({ rules: Object.freeze(compiled) });
}

/** Compiles `required_scopes` (route pattern → scope). Throws {@link PolicyError} on an invalid pattern. */
export function compileRequiredScopes(scopes: Readonly<Record<string, string>>, name = "required_scopes"): readonly CompiledScopeRule[] {
  return once(scopes, () => buildRequiredScopes(scopes, name));
}

function buildRequiredScopes(scopes: Readonly<Record<string, string>>, name: string): readonly CompiledScopeRule[] {
  const issues: PolicyIssue[] = [];
  const compiled = Object.entries(scopes).map(([pattern, scope]) => {
    if (typeof scope !== "string" || scope.length === 0) issues.push({ path: [pattern], message: "expected a scope name" });
    return { pattern, matcher: compilePathPattern(pattern, [pattern], issues), scope };
  });
  if (issues.length > 0) throw new PolicyError(name, issues);
  return Object.freeze(compiled);
}

/**
 * Each compiled policy by the very rules it was compiled from: the config
 * schema compiles a config's rules to validate them (refusing a bad rule
 * with its position), and every generation built from that config takes the
 * same compiled rules instead of compiling them again. Weak keys: an entry
 * lives as long as its config. A compiled policy is frozen, so sharing it is
 * safe; an input mutated after compiling would go unseen, and validated
 * configs are never mutated.
 */
const compiledFrom = new WeakMap<object, unknown>();

function once<T>(input: object, compile: () => T): T {
  if (compiledFrom.has(input)) return compiledFrom.get(input) as T;
  const compiled = compile();
  compiledFrom.set(input, compiled);
  return compiled;
}

const ALL_ACTIONS = ACTIONS.reduce((bits, a) => bits | actionBit(a), 0);

/**
 * The reference's default policy, used when `access_policy` is empty:
 * permit every action when the user shares a value with the owner in each of
 * roles, teams, projects and namespaces that the owner has; or is the owner;
 * or the resource is unowned.
 *
 * One deliberate change: an owner with none of the four attributes does not
 * make the first rule match for everybody (the reference's conditions are
 * true when the owner lacks the attribute); such a resource is then visible
 * to its owner only.
 */
export const DEFAULT_POLICY: CompiledAccessPolicy = Object.freeze({
  isDefault: true,
  rules: Object.freeze(
    (
      [
        [{ kind: "user_shares_owner_attributes", attrs: ["roles", "teams", "projects", "namespaces"], text: "user in owners roles, teams, projects, namespaces" }, "default: the user shares the owner's roles, teams, projects and namespaces"],
        [{ kind: "user_is_owner", text: "user is owner" }, "default: the user is the owner"],
        [{ kind: "resource_is_unowned", text: "resource is unowned" }, "default: the resource is unowned"],
      ] as const
    ).map(([condition, description], index): CompiledAccessRule => ({
      index,
      forbid: false,
      principal: undefined,
      actions: ALL_ACTIONS,
      resource: { kind: "any" },
      conditions: [condition as Condition],
      unless: false,
      decision: decisionOf(index, false, description, "default_policy"),
    })),
  ),
});
