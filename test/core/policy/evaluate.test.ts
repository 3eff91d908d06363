import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { compileAccessPolicy, PolicyError, type AccessRuleInput } from "../../../src/core/policy/compile.js";
import { evaluateAccess, resourceKey, type Resource } from "../../../src/core/policy/evaluate.js";
import { makeUser, type User } from "../../../src/core/user.js";

// Ports the behaviours of Llama Stack's tests/unit/server/test_access_control.py
// (its is_action_allowed, conditions and default policy), plus Tollgate's
// deliberate changes, each named as such.

const owner = (principal: string, attributes: Record<string, string[]> = {}) => makeUser(principal, attributes);
const model = (id: string, by?: User): Resource => ({ key: resourceKey("model", id), owner: by });
const allowed = (rules: AccessRuleInput[], user: User | undefined, action: "create" | "read" | "update" | "delete", r: Resource) =>
  evaluateAccess(compileAccessPolicy(rules), user, action, r).allowed;

describe("the default policy (empty access_policy)", () => {
  const rules: AccessRuleInput[] = [];

  test("a user with the owner's role may read the resource", () => {
    const r = model("m1", owner("creator", { roles: ["admin"] }));
    assert.equal(allowed(rules, makeUser("u", { roles: ["admin"] }), "read", r), true);
  });

  test("a user without the owner's role may not", () => {
    const r = model("m1", owner("creator", { roles: ["admin"] }));
    assert.equal(allowed(rules, makeUser("u", { roles: ["user"] }), "read", r), false);
  });

  test("with several owner attributes the user must share a value in each", () => {
    const r = model("m1", owner("creator", { roles: ["admin", "user"], teams: ["ml", "nlp"] }));
    assert.equal(allowed(rules, makeUser("u", { roles: ["user"], teams: ["nlp"] }), "read", r), true);
    assert.equal(allowed(rules, makeUser("u", { roles: ["user"], teams: ["vision"] }), "read", r), false);
    assert.equal(allowed(rules, makeUser("u", { roles: ["user"] }), "read", r), false, "missing teams");
  });

  test("projects and namespaces count as well", () => {
    const r = model("m1", owner("creator", { projects: ["p1"], namespaces: ["ns"] }));
    assert.equal(allowed(rules, makeUser("u", { projects: ["p1"], namespaces: ["ns"] }), "delete", r), true);
    assert.equal(allowed(rules, makeUser("u", { projects: ["p1"], namespaces: ["other"] }), "delete", r), false);
  });

  test("attributes other than the four are ignored", () => {
    const r = model("m1", owner("creator", { roles: ["x"], color: ["blue"] }));
    assert.equal(allowed(rules, makeUser("u", { roles: ["x"] }), "read", r), true);
  });

  test("an unowned resource is open to every user", () => {
    assert.equal(allowed(rules, makeUser("u"), "read", model("m1")), true);
    assert.equal(allowed(rules, makeUser("u"), "delete", model("m1")), true);
  });

  test("the owner always may", () => {
    assert.equal(allowed(rules, makeUser("creator"), "delete", model("m1", owner("creator", { roles: ["admin"] }))), true);
  });

  test("deliberate change: an owner with none of the four attributes does not open the resource to everybody", () => {
    const r = model("m1", owner("creator"));
    assert.equal(allowed(rules, makeUser("u", { roles: ["user"] }), "read", r), false);
    assert.equal(allowed(rules, makeUser("creator"), "read", r), true);
  });

  test("the decision names the default policy's rule", () => {
    const d = evaluateAccess(compileAccessPolicy([]), makeUser("creator"), "read", model("m1", owner("creator")));
    assert.equal(d.source, "default_policy");
    assert.equal(d.rule, 1);
  });
});

test("no user (authentication off) is always allowed", () => {
  const rules: AccessRuleInput[] = [{ forbid: { actions: ["read"] } }];
  const d = evaluateAccess(compileAccessPolicy(rules), undefined, "read", model("m1"));
  assert.equal(d.allowed, true);
  assert.equal(d.source, "no_user");
});

describe("the reference's sample policy", () => {
  // The policy of the access-control commit message (auth_providers.py seed).
  const rules: AccessRuleInput[] = [
    { permit: { principal: "user-1", actions: ["create", "read", "delete"] }, description: "user-1 has full access to all models" },
    { permit: { principal: "user-2", actions: ["read"], resource: "model::model-1" }, description: "user-2 has read access to model-1 only" },
    { permit: { actions: ["read"] }, when: ["user in owners roles"], description: "any user has read access to models with matching attributes" },
  ];
  const m1 = model("model-1", owner("x", { roles: ["r"] }));
  const m2 = model("model-2", owner("x", { roles: ["r"] }));

  test("user-1 may create, read and delete any model, but not update", () => {
    const u = makeUser("user-1");
    for (const action of ["create", "read", "delete"] as const) assert.equal(allowed(rules, u, action, m2), true, action);
    assert.equal(allowed(rules, u, "update", m2), false);
  });

  test("user-2 may read model-1 only", () => {
    const u = makeUser("user-2");
    assert.equal(allowed(rules, u, "read", m1), true);
    assert.equal(allowed(rules, u, "read", m2), false);
    assert.equal(allowed(rules, u, "delete", m1), false);
  });

  test("anyone with the owner's role may read", () => {
    assert.equal(allowed(rules, makeUser("user-3", { roles: ["r"] }), "read", m2), true);
    assert.equal(allowed(rules, makeUser("user-3", { roles: ["s"] }), "read", m2), false);
  });

  test("the decision carries the rule's index and description", () => {
    const d = evaluateAccess(compileAccessPolicy(rules), makeUser("user-2"), "read", m1);
    assert.deepEqual({ ...d }, { allowed: true, rule: 1, description: "user-2 has read access to model-1 only", source: "rule" });
  });
});

describe("rule order and matching", () => {
  test("the first matching rule decides: forbid before permit denies", () => {
    const rules: AccessRuleInput[] = [{ forbid: { actions: ["read"], resource: "model::m1" } }, { permit: { actions: ["read"] } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("m1")), false);
    assert.equal(allowed(rules, makeUser("u"), "read", model("m2")), true);
  });

  test("the first matching rule decides: permit before forbid allows", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"], resource: "model::m1" } }, { forbid: { actions: ["read"] } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("m1")), true);
  });

  test("no matching rule denies", () => {
    const d = evaluateAccess(compileAccessPolicy([{ permit: { actions: ["read"], resource: "file::*" } }]), makeUser("u"), "read", model("m1"));
    assert.equal(d.allowed, false);
    assert.equal(d.source, "no_match");
  });

  test("type::* matches every id of that type and no other type", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"], resource: "model::*" } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("anything/with::colons")), true);
    assert.equal(allowed(rules, makeUser("u"), "read", { key: "model_x::a", owner: undefined }), false);
    assert.equal(allowed(rules, makeUser("u"), "read", { key: "models::a", owner: undefined }), false);
  });

  test("an exact pattern matches only that resource", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"], resource: "model::m1" } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("m1")), true);
    assert.equal(allowed(rules, makeUser("u"), "read", model("m10")), false);
  });

  test("a regex pattern matches the whole type::id", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"], resource: "regex:model::llama-.*" } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("llama-3")), true);
    assert.equal(allowed(rules, makeUser("u"), "read", { key: "xmodel::llama-3", owner: undefined }), false);
    assert.equal(allowed(rules, makeUser("u"), "read", model("mistral")), false);
  });

  test("a regex with alternatives is anchored as a whole", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"], resource: "regex:model::a|model::b" } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("a")), true);
    assert.equal(allowed(rules, makeUser("u"), "read", model("a-evil")), false);
    assert.equal(allowed(rules, makeUser("u"), "read", { key: "evil-model::b", owner: undefined }), false);
  });

  test("a principal scope matches only that principal", () => {
    const rules: AccessRuleInput[] = [{ permit: { principal: "alice", actions: ["read"] } }];
    assert.equal(allowed(rules, makeUser("alice"), "read", model("m")), true);
    assert.equal(allowed(rules, makeUser("alice2"), "read", model("m")), false);
  });

  test("actions may be a single action", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: "read" } }];
    assert.equal(allowed(rules, makeUser("u"), "read", model("m")), true);
    assert.equal(allowed(rules, makeUser("u"), "update", model("m")), false);
  });
});

describe("conditions", () => {
  const alice = makeUser("alice", { roles: ["admin"], teams: ["ml"] });
  const bob = makeUser("bob", { roles: ["user"], teams: ["web"] });
  const owned = model("m", owner("alice", { teams: ["ml"] }));

  test("when: all conditions must hold", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: ["user with admin in roles", "user with ml in teams"] }];
    assert.equal(allowed(rules, alice, "read", owned), true);
    assert.equal(allowed(rules, makeUser("c", { roles: ["admin"], teams: ["web"] }), "read", owned), false);
  });

  test("unless: the rule applies unless all conditions hold", () => {
    const rules: AccessRuleInput[] = [
      { forbid: { actions: ["read"], resource: "vector_store::*" }, unless: "user with admin in roles" },
      { permit: { actions: ["read"] } },
    ];
    const vs: Resource = { key: "vector_store::vs1", owner: undefined };
    assert.equal(allowed(rules, alice, "read", vs), true);
    assert.equal(allowed(rules, bob, "read", vs), false);
  });

  test("unless with a list: the rule still applies when only some hold", () => {
    const rules: AccessRuleInput[] = [{ forbid: { actions: ["read"] }, unless: ["user with admin in roles", "user with ml in teams"] }, { permit: { actions: ["read"] } }];
    assert.equal(allowed(rules, alice, "read", owned), true);
    assert.equal(allowed(rules, makeUser("c", { roles: ["admin"] }), "read", owned), false);
  });

  test("user with <v> not in <attr>", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user with admin not in roles" }];
    assert.equal(allowed(rules, bob, "read", owned), true);
    assert.equal(allowed(rules, alice, "read", owned), false);
    assert.equal(allowed(rules, makeUser("n"), "read", owned), true, "no such attribute: the value is not in it");
  });

  test("user with <v> in <attr> is false without the attribute", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user with admin in roles" }];
    assert.equal(allowed(rules, makeUser("n"), "read", owned), false);
  });

  test("user is owner / user is not owner", () => {
    const is: AccessRuleInput[] = [{ permit: { actions: ["delete"] }, when: "user is owner" }];
    const isNot: AccessRuleInput[] = [{ permit: { actions: ["delete"] }, when: "user is not owner" }];
    assert.equal(allowed(is, alice, "delete", owned), true);
    assert.equal(allowed(is, bob, "delete", owned), false);
    assert.equal(allowed(is, alice, "delete", model("unowned")), false);
    assert.equal(allowed(isNot, bob, "delete", owned), true);
    assert.equal(allowed(isNot, alice, "delete", owned), false);
    assert.equal(allowed(isNot, alice, "delete", model("unowned")), true);
  });

  test("user in owners <attr> / user not in owners <attr>", () => {
    const inOwners: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user in owners teams" }];
    const notIn: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user not in owners teams" }];
    const teammate = makeUser("carol", { teams: ["ml", "x"] });
    assert.equal(allowed(inOwners, teammate, "read", owned), true);
    assert.equal(allowed(inOwners, bob, "read", owned), false);
    assert.equal(allowed(notIn, bob, "read", owned), true);
    assert.equal(allowed(notIn, teammate, "read", owned), false);
  });

  test("deliberate change: user in owners <attr> is false when the owner has no such attribute", () => {
    const inOwners: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user in owners teams" }];
    const noTeams = model("m", owner("alice", { roles: ["admin"] }));
    assert.equal(allowed(inOwners, makeUser("carol", { teams: ["ml"] }), "read", noTeams), false);
    assert.equal(allowed(inOwners, makeUser("carol", { teams: ["ml"] }), "read", model("unowned")), false);
  });

  test("resource is unowned", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "resource is unowned" }];
    assert.equal(allowed(rules, bob, "read", model("m")), true);
    assert.equal(allowed(rules, bob, "read", owned), false);
  });

  test("an attribute named like an Object.prototype member is not found on the prototype", () => {
    const rules: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user with x not in toString" }];
    assert.equal(allowed(rules, makeUser("n"), "read", owned), true);
    const inOwners: AccessRuleInput[] = [{ permit: { actions: ["read"] }, when: "user in owners constructor" }];
    assert.equal(allowed(inOwners, makeUser("n"), "read", owned), false);
  });
});

describe("invalid rules are refused with their position", () => {
  const refused = (rules: unknown[], pattern: RegExp) =>
    assert.throws(() => compileAccessPolicy(rules as AccessRuleInput[]), (err: unknown) => err instanceof PolicyError && pattern.test(err.message));

  test("an unknown condition", () => refused([{ permit: { actions: ["read"] } }, { permit: { actions: ["read"] }, when: "user is admin" }], /access_policy\[1\]\.when: unrecognised condition "user is admin"/));
  test("a bad condition inside a list", () => refused([{ permit: { actions: ["read"] }, unless: ["user is owner", "user with x"] }], /access_policy\[0\]\.unless\[1\]/));
  test("both when and unless", () => refused([{ permit: { actions: ["read"] }, when: "user is owner", unless: "user is owner" }], /\[0\]\.unless: a rule has either when or unless/));
  test("both permit and forbid", () => refused([{ permit: { actions: ["read"] }, forbid: { actions: ["read"] } }], /\[0\]: a rule has exactly one of permit or forbid/));
  test("neither permit nor forbid", () => refused([{ when: "user is owner" }], /exactly one of permit or forbid/));
  test("an unknown action", () => refused([{ permit: { actions: ["write"] } }], /\[0\]\.permit\.actions: unknown action "write"/));
  test("a resource pattern without ::", () => refused([{ forbid: { actions: ["read"], resource: "model:*" } }], /\[0\]\.forbid\.resource: expected a resource pattern/));
  test("an invalid regex", () => refused([{ permit: { actions: ["read"], resource: "regex:(" } }], /\[0\]\.permit\.resource: invalid regular expression/));
  test("every invalid rule is reported, not only the first", () => {
    try {
      compileAccessPolicy([{ permit: { actions: ["x" as never] } }, { forbid: { actions: ["read"] }, when: "nope" }]);
      assert.fail("expected a PolicyError");
    } catch (err) {
      assert.ok(err instanceof PolicyError);
      assert.deepEqual(err.issues.map((i) => i.path), [[0, "permit", "actions"], [1, "when"]]);
    }
  });
});

test("evaluation returns the same pre-built decision object every time", () => {
  const policy = compileAccessPolicy([{ permit: { actions: ["read"], resource: "model::*" } }]);
  const a = evaluateAccess(policy, makeUser("u"), "read", model("m"));
  const b = evaluateAccess(policy, makeUser("v"), "read", model("n"));
  assert.equal(a, b);
  assert.ok(Object.isFrozen(a));
});
