import type { Config } from "../core/config/schema.js";
import { InvalidParameterError } from "../core/errors.js";
import { canonicalPath } from "../core/path.js";
import { ACTIONS, type Action, type CompiledScopeRule, type Decision } from "../core/policy/compile.js";
import { evaluateAccess, type Resource } from "../core/policy/evaluate.js";
import { explainDecision } from "../core/policy/explain.js";
import { evaluateRoute, pathMatches, routeMatchPath } from "../core/policy/routes.js";
import { policyOptions } from "../core/policy/from-config.js";
import type { RecordStore } from "../core/stores/types.js";
import { makeUser, type User } from "../core/user.js";
import type { Catalog } from "../gateway/catalog.js";
import { attributesField, onlyFields, optionalString, requiredString, type JsonObject } from "./input.js";

/** Which stage of the pipeline decided (DESIGN.md: 4 route policy and scopes, 6 access policy). */
export type PolicyStage = "route_policy" | "required_scopes" | "access_policy";

/** The answer of `POST /admin/v1/policy/check`. */
export interface PolicyCheckAnswer {
  decision: "allow" | "deny";
  /** The deciding rule, 0-based in its list; null when none decided (no match, no policy). */
  rule: { index: number; description: string } | null;
  stage: PolicyStage;
  /** The resource the access policy was asked about (`type::id`), null when none was. */
  resource: string | null;
  /** The action asked about, or null for a route that names no resource. */
  action: Action | null;
  /** One line for a human, as `tollgate policy check` prints it. */
  explanation: string;
}

/** The policies of one config generation, compiled once, and what a route check needs. */
export interface PolicyChecker {
  check(body: JsonObject): Promise<PolicyCheckAnswer>;
}

/**
 * `POST /admin/v1/policy/check` for one config: the resource form
 * `{principal, attributes, action, resource, owner?}` runs the access
 * policy alone; the route form `{principal, attributes, method, path}`
 * walks the stages a request would (declared route, route policy, required
 * scopes, then the access policy on the resource the path names, with the
 * owner the record store holds for it).
 */
export function createPolicyChecker(config: Config, deps: { catalog: Catalog; store: RecordStore | undefined }): PolicyChecker {
  const compiled = policyOptions(config.server.auth);
  const accessPolicy = compiled.accessPolicy!;
  const routePolicy = compiled.routePolicy!;
  const scopes = compiled.requiredScopes ?? [];
  const rawAccess = (config.server.auth?.access_policy ?? []) as readonly RawRule[];
  const rawRoutes = (config.server.auth?.route_policy ?? []) as readonly RawRule[];

  function accessAnswer(decision: Decision, action: Action, key: string): PolicyCheckAnswer {
    return {
      decision: decision.allowed ? "allow" : "deny",
      rule: ruleOf(decision, decision.source === "rule" ? rawAccess : []),
      stage: "access_policy",
      resource: key,
      action,
      explanation: explainDecision(decision),
    };
  }

  async function checkRoute(user: User, method: string, rawPath: string): Promise<PolicyCheckAnswer> {
    let path: string;
    try {
      path = canonicalPath(rawPath);
    } catch {
      throw new InvalidParameterError("path", "path must be an absolute request path such as /v1/chat/completions");
    }
    const matchPath = routeMatchPath(path);
    const match = deps.catalog.match(method, matchPath, path);
    if (!match && config.server.resources.unlisted === "deny" && !config.server.public_paths.includes(path)) {
      return { decision: "deny", rule: null, stage: "route_policy", resource: null, action: null, explanation: `DENIED: ${method} ${path} is in no catalog route (404 route_not_found)` };
    }
    const route = evaluateRoute(routePolicy, user, matchPath);
    if (!route.allowed) return routeAnswer(route, rawRoutes);
    const scope = missingScope(scopes, user, matchPath);
    if (scope) {
      const description = `${scope.rule.pattern} requires scope ${scope.rule.scope}`;
      return { decision: "deny", rule: { index: scope.index, description }, stage: "required_scopes", resource: null, action: null, explanation: `DENIED by required_scopes[${scope.index}] (${description})` };
    }
    if (match && match.pathId !== undefined && (ACTIONS as readonly string[]).includes(match.action)) {
      const action = match.action as Action;
      const key = `${match.type}::${match.pathId}`;
      const owner = deps.store ? await deps.store.findOwner(match.type, match.pathId) : undefined;
      return accessAnswer(evaluateAccess(accessPolicy, user, action, { key, owner }), action, key);
    }
    // No resource in the path (a model named in the body, a list, a declared route): the route stages decided.
    return routeAnswer(route, rawRoutes);
  }

  return {
    async check(body) {
      const routeForm = Object.prototype.hasOwnProperty.call(body, "path") || Object.prototype.hasOwnProperty.call(body, "method");
      onlyFields(body, routeForm ? ["principal", "attributes", "method", "path"] : ["principal", "attributes", "action", "resource", "owner"]);
      const user = makeUser(requiredString(body, "principal"), attributesField(body));
      if (routeForm) {
        const method = requiredString(body, "method").toUpperCase();
        if (!/^[A-Z]{1,16}$/.test(method)) throw new InvalidParameterError("method", "method must be an HTTP method such as GET");
        return checkRoute(user, method, requiredString(body, "path"));
      }
      const action = requiredString(body, "action");
      if (!(ACTIONS as readonly string[]).includes(action)) throw new InvalidParameterError("action", `action must be one of ${ACTIONS.join(", ")}`);
      const key = requiredString(body, "resource");
      if (!/^[^:]+::.+$/.test(key)) throw new InvalidParameterError("resource", "resource must be type::id, e.g. model::llama-3");
      const resource: Resource = { key, owner: ownerField(body) };
      return accessAnswer(evaluateAccess(accessPolicy, user, action as Action, resource), action as Action, key);
    },
  };
}

/** A rule as written in the config, enough to describe it. */
interface RawRule {
  permit?: Record<string, unknown>;
  forbid?: Record<string, unknown>;
  when?: string | string[];
  unless?: string | string[];
  description?: string;
}

function routeAnswer(decision: Decision, raw: readonly RawRule[]): PolicyCheckAnswer {
  const verdict = decision.allowed ? "ALLOWED" : "DENIED";
  const rule = ruleOf(decision, raw);
  const explanation =
    decision.source === "no_policy" ? `${verdict}: no route_policy configured` : rule ? `${verdict} by route_policy[${rule.index}] (${rule.description})` : `${verdict}: no route rule matched (no match denies)`;
  return { decision: decision.allowed ? "allow" : "deny", rule, stage: "route_policy", resource: null, action: null, explanation };
}

/** The deciding rule for the answer: its index and its description, or one made from the rule. */
function ruleOf(decision: Decision, raw: readonly RawRule[]): PolicyCheckAnswer["rule"] {
  if (decision.source !== "rule" && decision.source !== "default_policy") return null;
  return { index: decision.rule, description: decision.description ?? describeRule(raw[decision.rule]) };
}

/** `permit read, create on model::* when user with admin in roles`: a rule said in one line. */
export function describeRule(rule: RawRule | undefined): string {
  if (!rule) return "";
  const effect = rule.forbid ? "forbid" : "permit";
  const scope = (rule.forbid ?? rule.permit ?? {}) as Record<string, unknown>;
  const words = [effect];
  if (scope.actions !== undefined) words.push([scope.actions].flat().join(", "));
  if (scope.resource !== undefined) words.push(`on ${String(scope.resource)}`);
  if (scope.paths !== undefined) words.push(`on ${[scope.paths].flat().join(", ")}`);
  if (scope.principal !== undefined) words.push(`for ${String(scope.principal)}`);
  if (rule.when !== undefined) words.push(`when ${[rule.when].flat().join(" and ")}`);
  if (rule.unless !== undefined) words.push(`unless ${[rule.unless].flat().join(" and ")}`);
  return words.join(" ");
}

function missingScope(rules: readonly CompiledScopeRule[], user: User, matchPath: string): { index: number; rule: CompiledScopeRule } | undefined {
  const scopes = Object.prototype.hasOwnProperty.call(user.attributes, "scopes") ? user.attributes.scopes : undefined;
  for (let index = 0; index < rules.length; index++) {
    const rule = rules[index]!;
    if (pathMatches(rule.matcher, matchPath) && !(Array.isArray(scopes) && scopes.includes(rule.scope))) return { index, rule };
  }
  return undefined;
}

/** `owner`: a principal, or `{principal, attributes}`; absent = unowned. */
function ownerField(body: JsonObject): Resource["owner"] {
  const value = Object.prototype.hasOwnProperty.call(body, "owner") ? body.owner : undefined;
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return makeUser(optionalString(body, "owner")!);
  if (typeof value !== "object" || Array.isArray(value)) throw new InvalidParameterError("owner", "owner must be a principal or {principal, attributes}");
  const owner = value as JsonObject;
  if (typeof owner.principal !== "string" || owner.principal === "") throw new InvalidParameterError("owner.principal", "owner.principal is required: a non-empty string");
  return makeUser(owner.principal, attributesField(owner, "attributes"));
}

