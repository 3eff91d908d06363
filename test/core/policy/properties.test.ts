import assert from "node:assert/strict";
import { test } from "node:test";
import { ACTIONS, compileAccessPolicy, type AccessRuleInput, type Action } from "../../../src/core/policy/compile.js";
import { evaluateAccess, type Resource } from "../../../src/core/policy/evaluate.js";
import { makeUser, type User } from "../../../src/core/user.js";

// Property tests with small seeded generators (no fast-check dependency):
// every run tries the same cases, and a failure prints the seed and case.

/** mulberry32: a tiny deterministic PRNG. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const subset = <T>(xs: readonly T[]): T[] => xs.filter(() => next() < 0.5);
  return { next, int, pick, subset };
}
type Rng = ReturnType<typeof rng>;

const PRINCIPALS = ["alice", "bob", "carol"];
const VALUES = ["a", "b", "c"];
const ATTRS = ["roles", "teams"];
const TYPES = ["model", "file"];
const IDS = ["m1", "m2", "x.y"];

function genUser(r: Rng): User {
  const attributes: Record<string, string[]> = {};
  for (const attr of ATTRS) if (r.next() < 0.7) attributes[attr] = r.subset(VALUES);
  return makeUser(r.pick(PRINCIPALS), attributes);
}

function genResource(r: Rng): Resource {
  return { key: `${r.pick(TYPES)}::${r.pick(IDS)}`, owner: r.next() < 0.3 ? undefined : genUser(r) };
}

function genCondition(r: Rng): string {
  switch (r.int(7)) {
    case 0: return `user with ${r.pick(VALUES)} in ${r.pick(ATTRS)}`;
    case 1: return `user with ${r.pick(VALUES)} not in ${r.pick(ATTRS)}`;
    case 2: return "user is owner";
    case 3: return "user is not owner";
    case 4: return `user in owners ${r.pick(ATTRS)}`;
    case 5: return `user not in owners ${r.pick(ATTRS)}`;
    default: return "resource is unowned";
  }
}

function genScope(r: Rng) {
  const actions = r.subset(ACTIONS);
  const scope: { principal?: string; actions: Action[]; resource?: string } = { actions: actions.length ? actions : ["read"] };
  if (r.next() < 0.3) scope.principal = r.pick(PRINCIPALS);
  const kind = r.int(4);
  if (kind === 1) scope.resource = `${r.pick(TYPES)}::*`;
  else if (kind === 2) scope.resource = `${r.pick(TYPES)}::${r.pick(IDS)}`;
  else if (kind === 3) scope.resource = `regex:${r.pick(TYPES)}::m.*`;
  return scope;
}

function genRule(r: Rng): AccessRuleInput {
  const rule: AccessRuleInput = r.next() < 0.5 ? { permit: genScope(r) } : { forbid: genScope(r) };
  const k = r.int(3);
  const conditions = Array.from({ length: 1 + r.int(2) }, () => genCondition(r));
  if (k === 1) rule.when = conditions;
  else if (k === 2) rule.unless = conditions;
  return rule;
}

const CASES = 2000;

test("a forbid rule that matches, placed first, denies whatever permits follow", () => {
  for (let seed = 1; seed <= CASES; seed++) {
    const r = rng(seed);
    const user = genUser(r);
    const resource = genResource(r);
    const action = r.pick(ACTIONS);
    const rest = Array.from({ length: r.int(5) }, () => genRule(r));
    const forbid: AccessRuleInput = { forbid: { actions: [action], resource: resource.key } };
    const d = evaluateAccess(compileAccessPolicy([forbid, ...rest, { permit: { actions: [...ACTIONS] } }]), user, action, resource);
    assert.equal(d.allowed, false, `seed ${seed}`);
    assert.equal(d.rule, 0, `seed ${seed}`);
  }
});

test("swapping a matching forbid and a matching permit flips the decision: order alone decides", () => {
  for (let seed = 1; seed <= CASES; seed++) {
    const r = rng(seed);
    const user = genUser(r);
    const resource = genResource(r);
    const action = r.pick(ACTIONS);
    const scope = { actions: [action], resource: resource.key };
    const forbidFirst = compileAccessPolicy([{ forbid: scope }, { permit: scope }]);
    const permitFirst = compileAccessPolicy([{ permit: scope }, { forbid: scope }]);
    assert.equal(evaluateAccess(forbidFirst, user, action, resource).allowed, false, `seed ${seed}`);
    assert.equal(evaluateAccess(permitFirst, user, action, resource).allowed, true, `seed ${seed}`);
  }
});

test("a rule with unless C applies exactly when the same rule with when C does not", () => {
  for (let seed = 1; seed <= CASES; seed++) {
    const r = rng(seed);
    const user = genUser(r);
    const resource = genResource(r);
    const action = r.pick(ACTIONS);
    const conditions = Array.from({ length: 1 + r.int(3) }, () => genCondition(r));
    const scope = { actions: [action] };
    const withWhen = evaluateAccess(compileAccessPolicy([{ permit: scope, when: conditions }]), user, action, resource);
    const withUnless = evaluateAccess(compileAccessPolicy([{ permit: scope, unless: conditions }]), user, action, resource);
    assert.notEqual(withWhen.allowed, withUnless.allowed, `seed ${seed}: ${conditions.join(", ")}`);
  }
});

test("the decision of a random policy is the first applicable rule's, or a denial (reference model)", () => {
  for (let seed = 1; seed <= CASES; seed++) {
    const r = rng(seed);
    const rules = Array.from({ length: 1 + r.int(8) }, () => genRule(r));
    const user = genUser(r);
    const resource = genResource(r);
    const action = r.pick(ACTIONS);
    const policy = compileAccessPolicy(rules);
    // Each rule alone, followed by nothing: allowed/denied tells whether it applies.
    let expected: { allowed: boolean; rule: number } = { allowed: false, rule: -1 };
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      const asPermit: AccessRuleInput = { ...rule, permit: rule.permit ?? rule.forbid, forbid: undefined };
      if (evaluateAccess(compileAccessPolicy([asPermit]), user, action, resource).allowed) {
        expected = { allowed: rule.permit !== undefined, rule: i };
        break;
      }
    }
    const d = evaluateAccess(policy, user, action, resource);
    assert.deepEqual({ allowed: d.allowed, rule: d.rule }, expected, `seed ${seed}`);
  }
});

test("a regex resource pattern never matches a key that merely contains a match", () => {
  for (let seed = 1; seed <= CASES; seed++) {
    const r = rng(seed);
    const id = `${r.pick(IDS)}${r.int(10)}`;
    const exact = `model::${id}`;
    const policy = compileAccessPolicy([{ permit: { actions: ["read"], resource: `regex:${exact.replace(/[.]/g, "\\.")}` } }]);
    const prefix = r.pick(["x", "a", "model"]);
    const suffix = r.pick(["x", "-1", "::y"]);
    assert.equal(evaluateAccess(policy, makeUser("u"), "read", { key: exact, owner: undefined }).allowed, true, `seed ${seed}`);
    assert.equal(evaluateAccess(policy, makeUser("u"), "read", { key: prefix + exact, owner: undefined }).allowed, false, `seed ${seed}`);
    assert.equal(evaluateAccess(policy, makeUser("u"), "read", { key: exact + suffix, owner: undefined }).allowed, false, `seed ${seed}`);
  }
});
