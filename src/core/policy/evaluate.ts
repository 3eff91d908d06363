import type { User } from "../user.js";
import { allHold, type Owner } from "./conditions.js";
import { actionBit, NO_MATCH, NO_USER, type Action, type CompiledAccessPolicy, type CompiledAccessRule, type Decision, type ResourceMatcher } from "./compile.js";

/** A resource a decision is about. */
export interface Resource {
  /** `type::id`, e.g. `model::llama-3` (see {@link resourceKey}); what rules' resource patterns match. */
  readonly key: string;
  /** Who created it; undefined = unowned. */
  readonly owner: Owner | undefined;
}

/** `type::id`, the form resource patterns match. */
export function resourceKey(type: string, id: string): string {
  return `${type}::${id}`;
}

function resourceMatches(m: ResourceMatcher, key: string): boolean {
  switch (m.kind) {
    case "any":
      return true;
    case "exact":
      return m.key === key;
    case "type":
      return key.startsWith(m.prefix);
    case "regex":
      return m.re.test(key);
  }
}

function scopeMatches(rule: CompiledAccessRule, action: number, resource: Resource, principal: string): boolean {
  if ((rule.actions & action) === 0) return false;
  if (rule.principal !== undefined && rule.principal !== principal) return false;
  return resourceMatches(rule.resource, resource.key);
}

/**
 * May `user` perform `action` on `resource`? The reference's
 * `is_action_allowed`: rules tried in order, the first whose scope matches
 * and whose `when` conditions all hold (or whose `unless` conditions do not
 * all hold) decides; no match denies; no user (authentication off) allows.
 * Returns a pre-built {@link Decision}: nothing is allocated.
 *
 * @example evaluateAccess(policy, user, "read", { key: "model::llama-3", owner: undefined }).allowed
 */
export function evaluateAccess(policy: CompiledAccessPolicy, user: User | undefined, action: Action, resource: Resource): Decision {
  if (user === undefined) return NO_USER;
  const bit = actionBit(action);
  const rules = policy.rules;
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    if (!scopeMatches(rule, bit, resource, user.principal)) continue;
    const hold = allHold(rule.conditions, user, resource.owner);
    if (rule.unless ? !hold : hold) return rule.decision;
  }
  return NO_MATCH;
}
