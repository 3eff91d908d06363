import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { validateConfig } from "../../src/core/config/load.js";
import type { Config } from "../../src/core/config/schema.js";
import { createGeneration, type Generation } from "../../src/core/generation.js";
import { compileAccessPolicy, compileRoutePolicy } from "../../src/core/policy/compile.js";
import { makeUser } from "../../src/core/user.js";
import { captureLog } from "../support/log.js";

const folder = mkdtempSync(join(tmpdir(), "tollgate-generation-"));
after(() => rmSync(folder, { recursive: true, force: true }));

function config(overrides: { endpoint?: string; requests?: number } = {}): Config {
  return validateConfig(
    {
      server: {
        auth: {
          provider_config: { type: "custom", endpoint: overrides.endpoint ?? "http://127.0.0.1:9/validate" },
          access_policy: [{ permit: { actions: ["read"], resource: "model::*" } }],
          route_policy: [{ permit: { paths: "/v1/*" } }],
        },
        quota: {
          kvstore: { type: "sqlite", db_path: join(folder, "quota.db") },
          period: "minute",
          anonymous_max_requests: 5,
          authenticated_max_requests: overrides.requests ?? 10,
        },
      },
    },
    "test config",
  );
}

/** What /ready would say of the quota store. */
async function quotaStoreReason(generation: Generation): Promise<string | undefined> {
  const check = (await generation.ping()).find((c) => c.name === "quota_store");
  return check && (check.failure?.reason ?? "ok");
}

describe("a configuration generation", () => {
  test("the rules a config was validated with are compiled once: the generation takes the same compiled policy", () => {
    const validated = config();
    const auth = validated.server.auth!;
    const first = compileAccessPolicy(auth.access_policy);
    assert.equal(compileAccessPolicy(auth.access_policy), first);
    assert.equal(compileRoutePolicy(auth.route_policy), compileRoutePolicy(auth.route_policy));
    // A copy of the same rules is other rules: compiled anew, to the same decisions.
    assert.notEqual(compileAccessPolicy(structuredClone(auth.access_policy)), first);
  });

  test("a reload that changes only the limits carries over the provider and the quota store; each is closed when its last generation is", async () => {
    const { log } = captureLog();
    const first = await createGeneration({ config: config(), log });
    const second = await createGeneration({ config: config({ requests: 20 }), log, previous: first });
    assert.equal(second.provider, first.provider, "same provider config: carried over");
    assert.equal(second.quotaStore, first.quotaStore, "same kvstore: carried over");
    assert.notEqual(second.quota, first.quota, "new limits: a new quota on the same store");

    await first.close();
    // The store the second generation still holds stays open.
    assert.equal(await quotaStoreReason(second), "ok");
    const grant = await second.quota!.check({ user: makeUser("alice", {}), remoteAddress: "127.0.0.1", headers: {} });
    assert.ok(grant.headers);

    await second.close();
    assert.notEqual(await quotaStoreReason(second), "ok", "released by its last generation: closed");
    await second.close(); // idempotent
  });

  test("a changed provider config builds a new provider and leaves the previous generation's alone", async () => {
    const { log } = captureLog();
    const first = await createGeneration({ config: config(), log });
    const second = await createGeneration({ config: config({ endpoint: "http://127.0.0.1:9/other" }), log, previous: first });
    assert.notEqual(second.provider, first.provider);
    assert.equal(second.quotaStore, first.quotaStore);
    await second.close();
    // The store is still the first generation's: it answers.
    assert.equal(await quotaStoreReason(first), "ok");
    await first.close();
  });

  test("can() decides as the pipeline does: a user may read a model, not delete it", async () => {
    const { log } = captureLog();
    const generation = await createGeneration({ config: config(), log });
    try {
      const alice = makeUser("alice", {});
      assert.equal(generation.can(alice, "read", "model::llama"), true);
      assert.equal(generation.can(alice, "delete", "model::llama"), false);
    } finally {
      await generation.close();
    }
  });
});
