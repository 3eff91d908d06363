import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ForbiddenError } from "../../../src/core/errors.js";
import { compileRequiredScopes, compileRoutePolicy, PolicyError, type RouteRuleInput } from "../../../src/core/policy/compile.js";
import { checkRequiredScopes, evaluateRoute, routeMatchPath } from "../../../src/core/policy/routes.js";
import { makeUser } from "../../../src/core/user.js";

const user = makeUser("u", { roles: ["user"] });
const admin = makeUser("a", { roles: ["admin"] });
const route = (rules: RouteRuleInput[], u = user, path: string) => evaluateRoute(compileRoutePolicy(rules), u, routeMatchPath(path)).allowed;

describe("route_policy", () => {
  test("an empty route policy allows every path", () => assert.equal(route([], user, "/v1/anything"), true));
  test("without a user (a route_policy and no provider) rules without conditions decide, as in Llama Stack 0.7", () => {
    assert.equal(evaluateRoute(compileRoutePolicy([{ forbid: { paths: "*" } }]), undefined, "/v1/x").allowed, false);
    assert.equal(evaluateRoute(compileRoutePolicy([{ permit: { paths: "/v1/models*" } }]), undefined, "/v1/models").allowed, true);
  });
  test("without a user a rule with conditions never applies, and no match denies", () => {
    const policy = compileRoutePolicy([{ permit: { paths: "*" }, when: "user with admin in roles" }, { permit: { paths: "*" }, unless: "user with admin in roles" }]);
    assert.equal(evaluateRoute(policy, undefined, "/v1/models").allowed, false);
  });
  test("a configured policy with no matching rule denies", () => {
    assert.equal(route([{ permit: { paths: "/v1/models" } }], user, "/v1/files"), false);
  });
  test("exact paths match exactly", () => {
    const rules: RouteRuleInput[] = [{ permit: { paths: ["/v1/models"] } }];
    assert.equal(route(rules, user, "/v1/models"), true);
    assert.equal(route(rules, user, "/v1/models/m1"), false);
  });
  test("a trailing * matches by prefix", () => {
    const rules: RouteRuleInput[] = [{ permit: { paths: ["/v1/files*"] } }];
    assert.equal(route(rules, user, "/v1/files"), true);
    assert.equal(route(rules, user, "/v1/files/f1/content"), true);
    assert.equal(route(rules, user, "/v1/models"), false);
  });
  test("* alone matches every path", () => assert.equal(route([{ permit: { paths: "*" } }], user, "/x/y"), true));
  test("regex paths match the whole path", () => {
    const rules: RouteRuleInput[] = [{ permit: { paths: "regex:/v1/(files|models)(/.*)?" } }];
    assert.equal(route(rules, user, "/v1/files/a"), true);
    assert.equal(route(rules, user, "/v1/models"), true);
    assert.equal(route(rules, user, "/v2/v1/files"), false);
    assert.equal(route(rules, user, "/v1/filesx"), false);
  });
  test("conditions apply: the design's example", () => {
    const rules: RouteRuleInput[] = [{ permit: { paths: ["/v1/files*", "/v1/models*"] }, when: "user with user in roles" }];
    assert.equal(route(rules, user, "/v1/files"), true);
    assert.equal(route(rules, admin, "/v1/files"), false);
  });
  test("forbid before permit; unless", () => {
    const rules: RouteRuleInput[] = [{ forbid: { paths: "/v1/admin*" }, unless: "user with admin in roles" }, { permit: { paths: "*" } }];
    assert.equal(route(rules, user, "/v1/admin/x"), false);
    assert.equal(route(rules, admin, "/v1/admin/x"), true);
    assert.equal(route(rules, user, "/v1/models"), true);
  });
  test("case variants cannot step around a forbid (`;` never gets here: the canonical path refuses it)", () => {
    const rules: RouteRuleInput[] = [{ forbid: { paths: ["/v1/admin*", "/v1/secret"] } }, { permit: { paths: "*" } }];
    for (const path of ["/V1/Admin", "/v1/ADMIN/x", "/v1/SECRET", "/V1/Secret"]) {
      assert.equal(route(rules, user, path), false, path);
    }
  });
  test("configured paths are canonicalised", () => {
    assert.equal(route([{ permit: { paths: "/v1//models/" } }], user, "/v1/models"), true);
    assert.equal(route([{ permit: { paths: "/V1/Models" } }], user, "/v1/models"), true);
  });
  test("a prefix ending in / keeps its slash", () => {
    const rules: RouteRuleInput[] = [{ permit: { paths: "/v1/files/*" } }];
    assert.equal(route(rules, user, "/v1/files/a"), true);
    assert.equal(route(rules, user, "/v1/filesystem"), false);
  });
  test("invalid rules are refused with their position", () => {
    assert.throws(() => compileRoutePolicy([{ permit: { paths: "v1/x" } }]), (e: unknown) => e instanceof PolicyError && /route_policy\[0\]\.permit\.paths: expected an absolute path/.test(e.message));
    assert.throws(() => compileRoutePolicy([{ permit: { paths: ["/a", "regex:("] } }]), (e: unknown) => e instanceof PolicyError && /route_policy\[0\]\.permit\.paths\[1\]/.test(e.message));
    assert.throws(() => compileRoutePolicy([{ permit: { paths: "/a" }, when: "bad" }]), /route_policy\[0\]\.when/);
  });
});

describe("required_scopes", () => {
  const rules = compileRequiredScopes({ "/v1/files*": "files:rw", "/v1/chat/completions": "chat" });
  test("a user whose scopes contain the scope passes", () => {
    assert.doesNotThrow(() => checkRequiredScopes(rules, makeUser("u", { scopes: ["files:rw"] }), "/v1/files/x"));
  });
  test("a user without it gets 403 with the reference's message", () => {
    assert.throws(
      () => checkRequiredScopes(rules, makeUser("u", { scopes: ["chat"] }), "/v1/files"),
      (e: unknown) => e instanceof ForbiddenError && e.status === 403 && e.message === "Access denied: user does not have required scope: files:rw",
    );
    assert.throws(() => checkRequiredScopes(rules, makeUser("u"), "/v1/chat/completions"), /required scope: chat/);
  });
  test("paths no pattern matches need no scope", () => assert.doesNotThrow(() => checkRequiredScopes(rules, makeUser("u"), "/v1/models")));
  test("no user (authentication off) needs no scope", () => assert.doesNotThrow(() => checkRequiredScopes(rules, undefined, "/v1/files")));
  test("case and ; variants still need the scope", () => {
    for (const p of ["/V1/FILES", "/v1/files;x", "/v1/Chat/Completions"]) {
      assert.throws(() => checkRequiredScopes(rules, makeUser("u"), routeMatchPath(p)), /required scope/, p);
    }
  });
});
