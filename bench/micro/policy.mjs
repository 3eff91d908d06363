#!/usr/bin/env node
// Stage 4 and 6 costs: access-policy evaluation per second with 10, 100 and
// 1,000 rules, worst case (the deciding rule is the last one), and a route
// policy of 100 rules. Compiled once, as the gateway does at start-up.
import { compileAccessPolicy, compileRoutePolicy } from "../../dist/core/policy/compile.js";
import { evaluateAccess } from "../../dist/core/policy/evaluate.js";
import { evaluateRoute, routeMatchPath } from "../../dist/core/policy/routes.js";
import { makeUser } from "../../dist/core/user.js";
import { measure, table } from "./_measure.mjs";

const user = makeUser("alice", { roles: ["user"], teams: ["ml"] });
const owner = makeUser("carol", { teams: ["ml"] });
const resource = { key: "file::file-abc123", owner };

/** `n - 1` rules that do not apply (mixed kinds: principals, other types, regexes, failing conditions), then the one that decides. */
function rules(n) {
  const out = [];
  for (let i = 0; i < n - 1; i++) {
    switch (i % 4) {
      case 0: out.push({ permit: { principal: `user-${i}`, actions: ["read"] } }); break;
      case 1: out.push({ forbid: { actions: ["read"], resource: `vector_store::vs_${i}` } }); break;
      case 2: out.push({ permit: { actions: ["read"], resource: `regex:model::m-${i}-.*` } }); break;
      default: out.push({ forbid: { actions: ["read"] }, when: [`user with team-${i} in teams`] });
    }
  }
  out.push({ permit: { actions: ["read"] }, when: "user in owners teams" });
  return out;
}

const rows = [10, 100, 1000].map((n) => {
  const policy = compileAccessPolicy(rules(n));
  if (!evaluateAccess(policy, user, "read", resource).allowed) throw new Error("benchmark policy must allow");
  return measure(`access policy, ${n.toLocaleString("en")} rules, last one decides`, () => evaluateAccess(policy, user, "read", resource));
});
const routes = compileRoutePolicy([
  ...Array.from({ length: 99 }, (_, i) => ({ forbid: { paths: [`/v1/area-${i}*`] } })),
  { permit: { paths: "*" }, when: "user with user in roles" },
]);
rows.push(measure("route policy, 100 rules, last one decides (with routeMatchPath)", () => evaluateRoute(routes, user, routeMatchPath("/v1/chat/completions"))));
console.log(table("Access policy evaluation", rows));
