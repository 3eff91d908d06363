import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { openRecordStore } from "../../src/core/stores/index.js";
import { linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { newTag, assertNotForwarded, assertForwarded } from "../support/forwarded.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { assertMatchesDocument, checked } from "./_openapi.js";

// The admin API end to end: a real gateway process on api_key auth over
// SQLite, its first admin key from --admin-key-file, the demo upstream
// recording what reached it. Every JSON answer is checked against the
// OpenAPI document the gateway serves.

interface Answer {
  status: number;
  headers: Headers;
  body: any;
}

const UPSTREAM_SECRET = "upstream-secret-4815162342";

describe("the admin API", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;
  let adminKey: string;

  before(async () => {
    upstream = await startUpstreamProcess();
    gateway = await startGateway({
      config: {
        server: {
          auth: {
            provider_config: { type: "api_key" },
            // Nothing but /v1/models for anyone: admin calls must not be subject to it.
            route_policy: [{ permit: { paths: "/v1/models" } }, { permit: { paths: "/v1/files*" }, when: "user with files in roles" }],
            required_scopes: { "/v1/files*": "files.read" },
            access_policy: [
              { permit: { actions: ["read"], resource: "regex:model::public-.*" }, description: "public models for everyone" },
              { forbid: { actions: ["read"], resource: "model::secret" }, unless: "user with admin in roles" },
              { permit: { actions: ["read", "create"] }, when: "user with admin in roles" },
            ],
          },
          // One request a day per principal: admin calls must not use it up.
          quota: { kvstore: { type: "sqlite", db_path: "./quota.db" }, authenticated_max_requests: 1, anonymous_max_requests: 1, period: "day" },
        },
        upstream: { url: upstream.url, api_key: UPSTREAM_SECRET },
        storage: { type: "sqlite", db_path: "./tollgate.db" },
      },
      args: ["--admin-key-file", "admin.key"],
    });
    adminKey = readFileSync(join(gateway.dir, "admin.key"), "utf8").trim();
  });
  after(async () => {
    await gateway?.close();
    await upstream?.close();
  });

  async function call(method: string, path: string, options: { body?: unknown; key?: string | null; template?: string; raw?: string } = {}): Promise<Answer> {
    const headers: Record<string, string> = {};
    const key = options.key === undefined ? adminKey : options.key;
    if (key !== null) headers.authorization = `Bearer ${key}`;
    let body: string | undefined = options.raw;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const res = await fetch(`${gateway.url}${path}`, { method, headers, body });
    const text = await res.text();
    const parsed = text ? JSON.parse(text) : undefined;
    if (options.template) assertMatchesDocument(method, options.template, res.status, parsed);
    return { status: res.status, headers: res.headers, body: parsed };
  }

  const keys = (body?: unknown, key?: string | null) => call("POST", "/admin/v1/keys", { body, key, template: "/admin/v1/keys" });

  test("without a credential: 401 with the challenge; with a non-admin key: 403; both in OpenAI's envelope", async () => {
    const none = await call("GET", "/admin/v1/keys", { key: null, template: "/admin/v1/keys" });
    assert.equal(none.status, 401);
    assert.match(none.headers.get("www-authenticate") ?? "", /^Bearer /);
    assert.equal(none.body.error.type, "authentication_error");
    const bad = await call("GET", "/admin/v1/keys", { key: "tg_not-a-key", template: "/admin/v1/keys" });
    assert.equal(bad.status, 401);

    const user = await keys({ principal: "plain-user", attributes: { roles: ["user"] } });
    assert.equal(user.status, 201);
    for (const [method, path, template] of [
      ["GET", "/admin/v1/keys", "/admin/v1/keys"],
      ["GET", "/admin/v1/config", "/admin/v1/config"],
      ["POST", "/admin/v1/policy/check", "/admin/v1/policy/check"],
      ["GET", "/admin/v1/usage", "/admin/v1/usage"],
    ] as const) {
      const refused = await call(method, path, { key: user.body.key, template, body: method === "POST" ? {} : undefined });
      assert.equal(refused.status, 403, `${method} ${path}`);
      assert.equal(refused.body.error.code, "admin_required");
      assert.equal(refused.body.error.type, "permission_error");
    }
  });

  test("a key created over the API works against the upstream at once; its secret is shown on create only", async () => {
    const created = await keys({ principal: "dora", attributes: { roles: ["user", "files"], scopes: ["files.read"] }, expires_in: "30d" });
    assert.equal(created.status, 201);
    assert.match(created.body.key, /^tg_[A-Za-z0-9_-]{43}$/);
    assert.equal(created.body.principal, "dora");
    assert.deepEqual(created.body.attributes, { roles: ["user", "files"], scopes: ["files.read"] });
    assert.equal(created.body.status, "active");
    const expires = Date.parse(created.body.expires_at) - Date.parse(created.body.created_at);
    assert.equal(expires, 30 * 24 * 3600 * 1000);

    const { tag, headers } = newTag();
    const models = await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, authorization: `Bearer ${created.body.key}` } });
    assert.equal(models.status, 200);
    await assertForwarded(upstream, tag);

    const one = await call("GET", `/admin/v1/keys/${created.body.id}`, { template: "/admin/v1/keys/{id}" });
    assert.equal(one.status, 200);
    assert.equal(one.body.key, undefined);
    assert.equal(one.body.id, created.body.id);
    const listed = await call("GET", "/admin/v1/keys?limit=1000", { template: "/admin/v1/keys" });
    assert.ok(listed.body.data.some((k: { id: string }) => k.id === created.body.id));
    assert.deepEqual(linesContaining(JSON.stringify(listed.body) + JSON.stringify(one.body), created.body.key), []);
    assert.deepEqual(linesContaining(JSON.stringify(listed.body), created.body.key.slice(12)), []);
  });

  test("a key's name and per-key limits are stored, shown by get and list, and checked field by field", async () => {
    const created = await keys({ principal: "nina", name: "nina's laptop", limits: [{ spend: 25, period: "month" }, { requests: 10, period: "second" }] });
    assert.equal(created.status, 201);
    assert.equal(created.body.name, "nina's laptop");
    assert.deepEqual(created.body.limits, [{ spend: 25, period: "month" }, { requests: 10, period: "second" }]);
    const one = await call("GET", `/admin/v1/keys/${created.body.id}`, { template: "/admin/v1/keys/{id}" });
    assert.equal(one.body.name, "nina's laptop");
    assert.deepEqual(one.body.limits, created.body.limits);
    const plain = await keys({ principal: "nina" });
    assert.equal(plain.body.name, null);
    assert.deepEqual(plain.body.limits, []);
    for (const [limits, param] of [
      [[{ spend: 25, period: "fortnight" }], "limits[0].period"],
      [[{ requests: 1, period: "day" }, { spend: -1, period: "day" }], "limits[1].spend"],
      [{ spend: 1, period: "day" }, "limits"],
    ] as const) {
      const refused = await keys({ principal: "nina", limits });
      assert.equal(refused.status, 400, JSON.stringify(limits));
      assert.equal(refused.body.error.param, param);
    }
    assert.equal((await keys({ principal: "nina", name: "" })).body.error.param, "name");
    const listed = await call("GET", "/admin/v1/keys?principal=nina", { template: "/admin/v1/keys" });
    assert.equal(listed.body.data.length, 2);
  });

  test("usage: rows grouped as asked over [from, to), each group field under its own name, filtered by principal", async () => {
    // Usage as the gateway records it (hourly, additive), written straight into the gateway's store.
    const store = await openRecordStore({ type: "sqlite", db_path: join(gateway.dir, "tollgate.db") });
    const hour = Date.UTC(2026, 0, 15, 10);
    try {
      await store.recordUsage([
        { hour, principal: "uma", keyId: "key_aaaa", model: "m1", upstream: "default", requests: 2, promptTokens: 10, completionTokens: 20, costNanos: 1_500_000_000 },
        { hour: hour + 3600_000, principal: "uma", keyId: "key_aaaa", model: "m2", upstream: "default", requests: 1, promptTokens: 5, completionTokens: 5, costNanos: 250_000_000 },
        { hour, principal: "walt", model: "m1", upstream: "default", requests: 4, promptTokens: 1, completionTokens: 1, costNanos: 0 },
        { hour: hour + 24 * 3600_000, principal: "uma", keyId: "key_aaaa", model: "m1", upstream: "default", requests: 100, promptTokens: 0, completionTokens: 0, costNanos: 0 },
      ]);
    } finally {
      await store.close();
    }
    const window = "from=2026-01-15T00:00:00Z&to=2026-01-16T00:00:00Z";
    const byPrincipal = await call("GET", `/admin/v1/usage?group_by=principal&${window}`, { template: "/admin/v1/usage" });
    assert.equal(byPrincipal.status, 200);
    assert.deepEqual(byPrincipal.body.data, [
      { principal: "uma", requests: 3, prompt_tokens: 15, completion_tokens: 25, cost: 1.75 },
      { principal: "walt", requests: 4, prompt_tokens: 1, completion_tokens: 1, cost: 0 },
    ]);
    const byModel = await call("GET", `/admin/v1/usage?group_by=principal,model,key&principal=uma&${window}`, { template: "/admin/v1/usage" });
    assert.deepEqual(byModel.body.data.map((r: Record<string, unknown>) => [r.principal, r.model, r.key, r.requests]), [["uma", "m1", "key_aaaa", 2], ["uma", "m2", "key_aaaa", 1]]);
    const byHour = await call("GET", `/admin/v1/usage?group_by=hour,day&${window}`, { template: "/admin/v1/usage" });
    assert.deepEqual(byHour.body.data.map((r: Record<string, unknown>) => [r.day, r.hour, r.requests]), [["2026-01-15", "2026-01-15T10:00:00.000Z", 6], ["2026-01-15", "2026-01-15T11:00:00.000Z", 1]]);
    // `to` is exclusive: the next day's hundred requests are not in the window.
    const later = await call("GET", `/admin/v1/usage?group_by=day&from=2026-01-15T00:00:00Z&to=2026-01-17T00:00:00Z`, { template: "/admin/v1/usage" });
    assert.deepEqual(later.body.data.map((r: Record<string, unknown>) => [r.day, r.requests]), [["2026-01-15", 7], ["2026-01-16", 100]]);
    // The default window is the last 24 hours: none of this.
    const recent = await call("GET", "/admin/v1/usage", { template: "/admin/v1/usage" });
    assert.ok(recent.body.data.every((r: { principal: string }) => r.principal !== "uma"));
    assert.deepEqual(recent.body.group_by, ["principal"]);
    assert.equal(Date.parse(recent.body.to) - Date.parse(recent.body.from), 24 * 3600 * 1000);
  });

  test("the list is newest first, filtered by principal, in pages joined by `after`", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const made = await keys({ principal: "pager" });
      ids.push(made.body.id);
      await sleep(2);
    }
    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await call("GET", `/admin/v1/keys?principal=pager&limit=2${after ? `&after=${after}` : ""}`, { template: "/admin/v1/keys" });
      assert.equal(page.status, 200);
      assert.equal(page.body.object, "list");
      assert.ok(page.body.data.length <= 2);
      assert.ok(page.body.data.every((k: { principal: string }) => k.principal === "pager"));
      seen.push(...page.body.data.map((k: { id: string }) => k.id));
      if (!page.body.has_more) break;
      after = seen.at(-1);
    }
    assert.deepEqual(seen, [...ids].reverse());
  });

  test("rotate with a grace: the new secret works at once, the old one until the grace ends, then 401", async () => {
    const made = await keys({ principal: "rita" });
    const rotated = await call("POST", `/admin/v1/keys/${made.body.id}/rotate`, { body: { grace: "3s" }, template: "/admin/v1/keys/{id}/rotate" });
    assert.equal(rotated.status, 200);
    assert.equal(rotated.body.id, made.body.id);
    assert.notEqual(rotated.body.key, made.body.key);
    const use = (key: string) => fetch(`${gateway.url}/admin/v1/nothing`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status);
    // 403 = authenticated (rita is no admin); 401 = the secret is refused.
    assert.equal(await use(rotated.body.key), 403);
    assert.equal(await use(made.body.key), 403);
    await sleep(4500);
    assert.equal(await use(made.body.key), 401);
    assert.equal(await use(rotated.body.key), 403);
  });

  test("revoke: 200 {id, deleted: true}, the key refused within a second, listed as revoked, and it cannot be rotated", async () => {
    const made = await keys({ principal: "victor", attributes: { roles: ["admin"] } });
    assert.equal((await call("GET", "/admin/v1/config", { key: made.body.key })).status, 200);
    const revoked = await call("DELETE", `/admin/v1/keys/${made.body.id}`, { template: "/admin/v1/keys/{id}" });
    assert.equal(revoked.status, 200);
    assert.deepEqual(revoked.body, { id: made.body.id, object: "api_key", deleted: true });
    await sleep(1100);
    assert.equal((await call("GET", "/admin/v1/config", { key: made.body.key, template: "/admin/v1/config" })).status, 401);
    const one = await call("GET", `/admin/v1/keys/${made.body.id}`, { template: "/admin/v1/keys/{id}" });
    assert.equal(one.body.status, "revoked");
    assert.ok(one.body.revoked_at);
    const rotate = await call("POST", `/admin/v1/keys/${made.body.id}/rotate`, { body: {}, template: "/admin/v1/keys/{id}/rotate" });
    assert.equal(rotate.status, 400);
    assert.equal(rotate.body.error.param, "id");
  });

  test("unknown key ids are 404 for get, rotate and delete", async () => {
    for (const [method, path, template] of [
      ["GET", "/admin/v1/keys/key_0000000000000000", "/admin/v1/keys/{id}"],
      ["DELETE", "/admin/v1/keys/key_0000000000000000", "/admin/v1/keys/{id}"],
      ["POST", "/admin/v1/keys/key_0000000000000000/rotate", "/admin/v1/keys/{id}/rotate"],
    ] as const) {
      const answer = await call(method, path, { template });
      assert.equal(answer.status, 404, `${method} ${path}`);
      assert.equal(answer.body.error.code, "key_not_found");
    }
  });

  test("bad input is 400 invalid_request_error naming the field, and creates nothing", async () => {
    const before = (await call("GET", "/admin/v1/keys?limit=1000")).body.data.length;
    const cases: [unknown, string][] = [
      [{}, "principal"],
      [{ principal: "" }, "principal"],
      [{ principal: 7 }, "principal"],
      [{ principal: "x", attributes: ["admin"] }, "attributes"],
      [{ principal: "x", attributes: { roles: "admin" } }, "attributes.roles"],
      [{ principal: "x", expires_in: "soon" }, "expires_in"],
      [{ principal: "x", expires_in: "0d" }, "expires_in"],
      [{ principal: "x", expire_in: "1d" }, "expire_in"],
    ];
    for (const [body, param] of cases) {
      const answer = await keys(body);
      assert.equal(answer.status, 400, JSON.stringify(body));
      assert.equal(answer.body.error.type, "invalid_request_error");
      assert.equal(answer.body.error.param, param, JSON.stringify(body));
    }
    const notJson = await call("POST", "/admin/v1/keys", { raw: "{principal:", template: "/admin/v1/keys" });
    assert.equal(notJson.status, 400);
    for (const [query, param] of [["limit=0", "limit"], ["limit=x", "limit"], ["after=key_nope", "after"], ["colour=red", "colour"]]) {
      const answer = await call("GET", `/admin/v1/keys?${query}`, { template: "/admin/v1/keys" });
      assert.equal(answer.status, 400, query);
      assert.equal(answer.body.error.param, param);
    }
    const usage = await call("GET", "/admin/v1/usage?group_by=colour", { template: "/admin/v1/usage" });
    assert.equal(usage.status, 400);
    assert.equal(usage.body.error.param, "group_by");
    const window = await call("GET", "/admin/v1/usage?from=yesterday", { template: "/admin/v1/usage" });
    assert.equal(window.body.error.param, "from");
    assert.equal((await call("GET", "/admin/v1/keys?limit=1000")).body.data.length, before);
  });

  test("policy/check, resource form: the deciding rule (0-based, with its description) and the stage", async () => {
    const check = (body: unknown) => call("POST", "/admin/v1/policy/check", { body, template: "/admin/v1/policy/check" });
    const pub = await check({ principal: "eve", attributes: {}, action: "read", resource: "model::public-llama" });
    assert.equal(pub.status, 200);
    assert.deepEqual({ ...pub.body, explanation: undefined }, { decision: "allow", rule: { index: 0, description: "public models for everyone" }, stage: "access_policy", resource: "model::public-llama", action: "read", explanation: undefined });
    const secret = await check({ principal: "eve", attributes: { roles: ["user"] }, action: "read", resource: "model::secret" });
    assert.equal(secret.body.decision, "deny");
    assert.deepEqual(secret.body.rule, { index: 1, description: "forbid read on model::secret unless user with admin in roles" });
    const boss = await check({ principal: "ann", attributes: { roles: ["admin"] }, action: "read", resource: "model::secret" });
    assert.equal(boss.body.decision, "allow");
    assert.equal(boss.body.rule.index, 2);
    const none = await check({ principal: "eve", attributes: {}, action: "delete", resource: "file::f1" });
    assert.equal(none.body.decision, "deny");
    assert.equal(none.body.rule, null);
    const bad = await check({ principal: "eve", action: "read", resource: "no-type" });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.param, "resource");
    const badAction = await check({ principal: "eve", action: "steal", resource: "model::m" });
    assert.equal(badAction.body.error.param, "action");
  });

  test("policy/check, route form: route_policy, required_scopes, then access_policy on the path's resource", async () => {
    const check = (body: unknown) => call("POST", "/admin/v1/policy/check", { body, template: "/admin/v1/policy/check" });
    const denied = await check({ principal: "eve", attributes: {}, method: "GET", path: "/v1/files/file-1" });
    assert.equal(denied.body.decision, "deny");
    assert.equal(denied.body.stage, "route_policy");
    assert.equal(denied.body.rule, null);
    const noScope = await check({ principal: "eve", attributes: { roles: ["files"] }, method: "GET", path: "/v1/files/file-1" });
    assert.equal(noScope.body.decision, "deny");
    assert.equal(noScope.body.stage, "required_scopes");
    assert.deepEqual(noScope.body.rule, { index: 0, description: "/v1/files* requires scope files.read" });
    const access = await check({ principal: "eve", attributes: { roles: ["files"], scopes: ["files.read"] }, method: "GET", path: "/v1/files/file-1" });
    assert.equal(access.body.stage, "access_policy");
    assert.equal(access.body.resource, "file::file-1");
    assert.equal(access.body.decision, "deny");
    const models = await check({ principal: "eve", attributes: {}, method: "GET", path: "/v1/models" });
    assert.deepEqual([models.body.decision, models.body.stage, models.body.rule?.index], ["allow", "route_policy", 0]);
    const badPath = await check({ principal: "eve", method: "GET", path: "v1/models" });
    assert.equal(badPath.status, 400);
    assert.equal(badPath.body.error.param, "path");
  });

  test("config: the running config with every secret as ***", async () => {
    const config = await call("GET", "/admin/v1/config", { template: "/admin/v1/config" });
    assert.equal(config.status, 200);
    assert.equal(config.body.upstream.api_key, "***");
    assert.equal(config.body.upstream.url, upstream.url);
    assert.equal(config.body.server.admin.when, "user with admin in roles");
    assert.deepEqual(linesContaining(JSON.stringify(config.body), UPSTREAM_SECRET), []);
  });

  test("admin calls pass no route policy, scope or quota, and are never forwarded", async () => {
    // The quota allows one request a day: the admin's calls above used none of it.
    for (let i = 0; i < 3; i++) assert.equal((await call("GET", "/admin/v1/keys?limit=1")).status, 200);
    const { tag, headers } = newTag();
    for (const path of ["/admin/v1/nothing", "/ADMIN/v1/keys", "/%61dmin/v1/keys", "/v1/../admin/v1/keys", "/admin", "/console/../admin/v1/x"]) {
      const res = await fetch(`${gateway.url}${path}`, { headers: { ...headers, authorization: `Bearer ${adminKey}` } });
      assert.notEqual(res.status, 502, path);
      await res.arrayBuffer();
    }
    await assertNotForwarded(upstream, tag);
    // The admin's own first request to the upstream still has its quota.
    const first = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(first.status, 200);
    const second = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(second.status, 429);
  });

  test("the OpenAPI document is served without a credential, and every response so far matched it", async () => {
    const res = await fetch(`${gateway.url}/admin/v1/openapi.json`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as { openapi: string; paths: Record<string, unknown> };
    assert.equal(doc.openapi, "3.1.0");
    assert.deepEqual(Object.keys(doc.paths).sort(), [
      "/admin/v1/config",
      "/admin/v1/keys",
      "/admin/v1/keys/{id}",
      "/admin/v1/keys/{id}/rotate",
      "/admin/v1/openapi.json",
      "/admin/v1/policy/check",
      "/admin/v1/usage",
    ]);
    for (const expected of ["POST /admin/v1/keys 201", "GET /admin/v1/keys 200", "GET /admin/v1/keys/{id} 200", "POST /admin/v1/keys/{id}/rotate 200", "DELETE /admin/v1/keys/{id} 200", "POST /admin/v1/policy/check 200", "GET /admin/v1/config 200", "GET /admin/v1/usage 200", "GET /admin/v1/keys 401", "GET /admin/v1/keys 403", "POST /admin/v1/keys 400"]) {
      assert.ok(checked.has(expected), `no test checked ${expected} against the document`);
    }
  });

  test("no admin key or created secret in the gateway's output", async () => {
    assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), adminKey), []);
  });
});
