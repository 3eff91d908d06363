import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createTollgate, type Tollgate } from "../../src/adapters/node.js";
import { makeUser } from "../../src/core/user.js";
import { captureLog } from "../support/log.js";

const alice = makeUser("alice", { roles: ["user"], teams: ["ml"] });
const teammate = { principal: "dave", attributes: { teams: ["ml"] } };

describe("tollgate.can with authentication on", () => {
  const captured = captureLog("info");
  let tollgate: Tollgate;

  before(async () => {
    tollgate = await createTollgate({
      config: {
        server: {
          auth: {
            provider_config: { type: "custom", endpoint: "http://127.0.0.1:9/validate" },
            access_policy: [
              { permit: { actions: ["read"] }, when: "user in owners teams" },
              { permit: { actions: ["read"], resource: "model::*" } },
            ],
          },
        },
      },
      log: captured.log,
    });
  });

  after(() => tollgate.close());

  test("follows the access_policy, owner included", () => {
    assert.equal(tollgate.can(alice, "read", "file::f1", teammate), true);
    assert.equal(tollgate.can(alice, "update", "file::f1", teammate), false);
    assert.equal(tollgate.can(alice, "read", "file::f1", { principal: "erin", attributes: { teams: ["web"] } }), false);
  });

  test("an absent owner means unowned", () => {
    assert.equal(tollgate.can(alice, "read", "file::f1"), false); // `user in owners teams` is false without an owner
    assert.equal(tollgate.can(alice, "read", "model::llama"), true);
  });

  test("no user (a public path) is denied, whatever the policy", () => {
    assert.equal(tollgate.can(undefined, "read", "model::llama"), false);
  });

  test("each decision goes to the audit log", () => {
    tollgate.can(alice, "read", "model::audited");
    const line = captured
      .text()
      .split("\n")
      .find((l) => l.includes("model::audited"));
    assert.ok(line, "no audit line");
    const entry = JSON.parse(line) as { component: string; principal: string; action: string; decision: string };
    assert.deepEqual([entry.component, entry.principal, entry.action, entry.decision], ["audit", "alice", "read", "allow"]);
  });

  test("an unknown action is a TypeError, not a silent denial", () => {
    assert.throws(() => tollgate.can(alice, "raed" as "read", "file::f1"), TypeError);
  });

  test("a resource that is not type::id is a TypeError", () => {
    assert.throws(() => tollgate.can(alice, "read", "f1"), /type::id/);
  });
});

describe("tollgate.can with authentication off", () => {
  test("no user is allowed, as the pipeline lets every request through", async () => {
    const tollgate = await createTollgate({ config: {}, log: captureLog("silent").log });
    try {
      assert.equal(tollgate.can(undefined, "delete", "file::f1"), true);
    } finally {
      await tollgate.close();
    }
  });
});
