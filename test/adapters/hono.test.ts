import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { serve, type ServerType } from "@hono/node-server";
import { Hono } from "hono";
import { tollgate, type HonoTollgate, type TollgateEnv } from "../../src/adapters/hono.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { captureLog } from "../support/log.js";
import { describeAdapterCases, fileAccess, rawRequest, whoami, type AppUnderTest, type StartApp } from "./_cases.js";

async function listen(app: Hono<TollgateEnv>, tg: HonoTollgate): Promise<AppUnderTest> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" }, () => resolve(s));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        if ("closeAllConnections" in server) server.closeAllConnections();
      });
      await tg.close();
    },
  };
}

/** The shared cases against Hono 4 on @hono/node-server: `app.use("*", tg.middleware)`, `c.get("user")`, `tg.can`. */
const start: StartApp = async (options, ran) => {
  const tg = await tollgate(options);
  const app = new Hono<TollgateEnv>();
  app.use("*", tg.middleware);
  for (const path of ["/health", "/v1/whoami", "/v1/telemetry/stats"]) {
    app.get(path, (c) => {
      ran();
      return c.json(whoami(c.get("user")));
    });
  }
  app.get("/v1/files/:id", (c) => {
    ran();
    return c.json(fileAccess(tg.can, c.get("user"), c.req.param("id")));
  });
  return listen(app, tg);
};

describeAdapterCases("hono", start);

describe("hono: the middleware", () => {
  const TOKEN = "sk-hono-middleware-0123456789";
  let auth: CustomAuthServer;
  let tg: HonoTollgate;
  let app: Hono<TollgateEnv>;

  before(async () => {
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice" } } });
    tg = await tollgate({
      config: {
        server: {
          auth: { provider_config: { type: "custom", endpoint: auth.url, timeout_ms: 2000 } },
          quota: { kvstore: { type: "sqlite", db_path: ":memory:" }, authenticated_max_requests: 100, period: "minute" },
        },
      },
      log: captureLog("silent").log,
    });
    app = new Hono<TollgateEnv>();
    app.use("*", tg.middleware);
    app.get("/v1/raw", () => new Response("raw", { status: 200 }));
    app.get("/v1/boom", () => {
      throw new Error("handler failed");
    });
    app.get("/v1/whoami", (c) => c.json({ principal: c.get("user")?.principal, path: c.get("tollgate").path }));
    app.onError((_err, c) => c.json({ error: "handler failed" }, 500));
  });

  after(async () => {
    await tg.close();
    await auth.close();
  });

  test("without @hono/node-server (app.request), two Authorization headers joined into one are still refused", async () => {
    const headers = new Headers();
    headers.append("authorization", `Bearer ${TOKEN}`);
    headers.append("authorization", "Bearer other");
    const res = await app.request("/v1/whoami", { headers });
    assert.equal(res.status, 401);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, "invalid_request");
  });

  test("without @hono/node-server, a good key passes and the canonical path is in c.get('tollgate')", async () => {
    const res = await app.request("/v1//whoami/", { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 404); // Hono routes the path as written; Tollgate checked its canonical form
    const ok = await app.request("/v1/whoami", { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.deepEqual(await ok.json(), { principal: "alice", path: "/v1/whoami" });
  });

  test("RateLimit headers reach a Response the handler built itself, and an error answer", async () => {
    const raw = await app.request("/v1/raw", { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(raw.status, 200);
    assert.ok(raw.headers.get("ratelimit"));
    const boom = await app.request("/v1/boom", { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(boom.status, 500);
    assert.ok(boom.headers.get("ratelimit"));
  });

  test("on @hono/node-server, an identity header sent twice is refused, not merged", async () => {
    const headerTg = await tollgate({
      config: { server: { auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } } } },
      log: captureLog("silent").log,
    });
    const headerApp = new Hono<TollgateEnv>();
    headerApp.use("*", headerTg.middleware);
    headerApp.get("/v1/whoami", (c) => c.json({ principal: c.get("user")?.principal }));
    const served = await listen(headerApp, headerTg);
    try {
      const one = await fetch(`${served.url}/v1/whoami`, { headers: { "x-user": "carol" } });
      assert.deepEqual(await one.json(), { principal: "carol" }); // the peer address came from c.env.incoming
      const twice = await rawRequest(served.url, "GET /v1/whoami HTTP/1.1\r\nHost: x\r\nX-User: mallory\r\nX-User: carol\r\nConnection: close\r\n\r\n");
      assert.equal(twice.status, 401);
    } finally {
      await served.close();
    }
  });
});
