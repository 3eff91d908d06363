import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The admin condition is checked through whichever provider is configured,
// not only Tollgate's own keys: here a custom-auth endpoint (Llama Stack's
// wire format) and a `server.admin.when` of the operator's own.

describe("the admin API behind the custom provider", { timeout: 60_000 }, () => {
  let auth: CustomAuthServer;
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;
  before(async () => {
    auth = await startCustomAuth({
      users: {
        "ops-token": { principal: "olga", attributes: { teams: ["ops"], roles: ["user"] } },
        "admin-role-token": { principal: "adam", attributes: { roles: ["admin"] } },
        "ops-intern-token": { principal: "ivan", attributes: { teams: ["ops"], roles: ["intern"] } },
      },
    });
    upstream = await startUpstreamProcess();
    gateway = await startGateway({
      config: {
        server: {
          auth: { provider_config: { type: "custom", endpoint: auth.url } },
          admin: { when: ["user with ops in teams", "user with intern not in roles"] },
        },
        upstream: { url: upstream.url },
      },
    });
  });
  after(async () => {
    await gateway?.close();
    await upstream?.close();
    await auth?.close();
  });

  const get = (path: string, token?: string) => fetch(`${gateway.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });

  test("every condition of server.admin.when must hold for the provider's user; the default's role alone is not enough", async () => {
    assert.equal((await get("/admin/v1/config", "ops-token")).status, 200);
    assert.equal((await get("/admin/v1/config", "admin-role-token")).status, 403);
    assert.equal((await get("/admin/v1/config", "ops-intern-token")).status, 403);
    assert.equal((await get("/admin/v1/config", "unknown-token")).status, 401);
    assert.equal((await get("/admin/v1/config")).status, 401);
    // The endpoint was asked about the admin path, as about any other.
    assert.ok(auth.requests.some((r) => r.request.path === "/admin/v1/config"));
  });

  test("the policy check and the config work; the running config shows the admin condition", async () => {
    const config = (await (await get("/admin/v1/config", "ops-token")).json()) as { server: { admin: { when: string[] } } };
    assert.deepEqual(config.server.admin.when, ["user with ops in teams", "user with intern not in roles"]);
    const check = await fetch(`${gateway.url}/admin/v1/policy/check`, {
      method: "POST",
      headers: { authorization: "Bearer ops-token", "content-type": "application/json" },
      body: JSON.stringify({ principal: "someone", attributes: {}, action: "read", resource: "model::m" }),
    });
    assert.equal(check.status, 200);
    // An empty access_policy is the reference's default: an unowned model is readable (rule 2 of the default policy).
    assert.deepEqual(((await check.json()) as { rule: unknown }).rule, { index: 2, description: "default: the resource is unowned" });
  });
});
