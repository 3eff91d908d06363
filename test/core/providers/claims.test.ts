import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { attributesFromClaims, claimAt, DEFAULT_OAUTH2_CLAIMS_MAPPING } from "../../../src/core/providers/claims.js";

describe("claims → attributes", () => {
  test("the reference's cases: strings become one-item lists, lists are kept", () => {
    const claims = { sub: "my-user", groups: ["group1", "group2"], scope: "foo bar", aud: "llama-stack" };
    assert.deepEqual({ ...attributesFromClaims(claims, { sub: "roles", groups: "teams" }) }, { roles: ["my-user"], teams: ["group1", "group2"] });
    assert.deepEqual({ ...attributesFromClaims({ sub: "my-user", tenant: "my-tenant" }, { sub: "roles", tenant: "namespaces" }) }, {
      roles: ["my-user"],
      namespaces: ["my-tenant"],
    });
  });

  test("several claims mapped to one attribute are concatenated", () => {
    const claims = { sub: "my-user", username: "my-username", tenant: "my-tenant", groups: ["group1", "group2"], team: "my-team" };
    const attributes = attributesFromClaims(claims, { sub: "roles", tenant: "namespaces", username: "roles", team: "teams", groups: "teams" });
    assert.deepEqual(new Set(attributes.roles), new Set(["my-user", "my-username"]));
    assert.deepEqual(new Set(attributes.teams), new Set(["my-team", "group1", "group2"]));
    assert.deepEqual(attributes.namespaces, ["my-tenant"]);
  });

  test("the default mapping is Llama Stack's", () => {
    assert.deepEqual({ ...DEFAULT_OAUTH2_CLAIMS_MAPPING }, {
      sub: "roles", username: "roles", groups: "teams", team: "teams", project: "projects", tenant: "namespaces", namespace: "namespaces",
    });
  });

  test("a string claim is split on any whitespace", () => {
    assert.deepEqual(attributesFromClaims({ scope: "  read\twrite\nadmin " }, { scope: "scopes" }).scopes, ["read", "write", "admin"]);
  });

  test("numbers, booleans, objects and null are ignored, and non-strings dropped from lists", () => {
    const claims = { n: 3, b: true, o: { a: 1 }, z: null, mixed: ["a", 1, null, "b"] };
    assert.deepEqual({ ...attributesFromClaims(claims, { n: "x", b: "x", o: "x", z: "x", mixed: "m" }) }, { m: ["a", "b"] });
  });

  test("a dot path reaches nested claims (Keycloak's resource_access.<client>.roles)", () => {
    const claims = { realm_access: { roles: ["offline_access"] }, resource_access: { app: { roles: ["admin", "viewer"] } } };
    assert.deepEqual({ ...attributesFromClaims(claims, { "resource_access.app.roles": "roles", "realm_access.roles": "roles" }) }, {
      roles: ["admin", "viewer", "offline_access"],
    });
  });

  test("a claim whose literal name contains dots is found before the nested path", () => {
    const claims = { "https://example.com/groups": ["g1"], "a.b": "literal", a: { b: "nested" } };
    assert.deepEqual(claimAt(claims, "https://example.com/groups"), ["g1"]);
    assert.equal(claimAt(claims, "a.b"), "literal");
    assert.equal(claimAt({ a: { b: "nested" } }, "a.b"), "nested");
  });

  test("a nested segment may itself contain dots, as Kubernetes' kubernetes.io claim", () => {
    const claims = { "kubernetes.io": { namespace: "ml", serviceaccount: { name: "trainer" } } };
    assert.deepEqual({ ...attributesFromClaims(claims, { "kubernetes.io.namespace": "namespaces", "kubernetes.io.serviceaccount.name": "roles" }) }, {
      namespaces: ["ml"],
      roles: ["trainer"],
    });
  });

  test("missing paths and inherited properties resolve to nothing", () => {
    assert.equal(claimAt({ a: {} }, "a.b.c"), undefined);
    assert.equal(claimAt({ a: "x" }, "a.length"), undefined);
    assert.equal(claimAt({}, "constructor"), undefined);
    assert.equal(claimAt({ a: {} }, "a.__proto__"), undefined);
  });

  test("an attribute named __proto__ stays an ordinary entry", () => {
    const attributes = attributesFromClaims({ sub: "u" }, { sub: "__proto__" });
    assert.deepEqual(Object.getOwnPropertyDescriptor(attributes, "__proto__")?.value, ["u"]);
    assert.equal(Object.getPrototypeOf(attributes), null);
  });
});
