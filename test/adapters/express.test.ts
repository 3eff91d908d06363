import assert from "node:assert/strict";
import type { Server } from "node:http";
import { after, before, describe, test } from "node:test";
import express from "express";
import { tollgate, type ExpressTollgate } from "../../src/adapters/express.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { captureLog } from "../support/log.js";
import { describeAdapterCases, fileAccess, servedBy, whoami, type AppUnderTest, type StartApp } from "./_cases.js";

async function listen(app: express.Express, tg: ExpressTollgate): Promise<AppUnderTest> {
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  return servedBy(server, tg);
}

/** The shared cases against Express 5: `app.use(tg.middleware)`, `req.user`, `tg.can`. */
const start: StartApp = async (options, ran) => {
  const tg = await tollgate(options);
  const app = express();
  app.use(tg.middleware);
  app.get(["/health", "/v1/whoami", "/v1/telemetry/stats"], (req, res) => {
    ran();
    res.json(whoami(req.user));
  });
  app.get("/v1/files/:id", (req, res) => {
    ran();
    res.json(fileAccess(tg.can, req.user, req.params.id));
  });
  return listen(app, tg);
};

describeAdapterCases("express", start);

describe("express: mounted under a path", () => {
  const TOKEN = "sk-express-mounted-0123456789";
  let auth: CustomAuthServer;
  let served: AppUnderTest;

  before(async () => {
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice" } } });
    const tg = await tollgate({
      config: {
        server: {
          public_paths: ["/health"],
          auth: {
            provider_config: { type: "custom", endpoint: auth.url, timeout_ms: 2000 },
            route_policy: [{ forbid: { paths: ["/api/admin*"] } }, { permit: { paths: "*" } }],
          },
        },
      },
      log: captureLog("silent").log,
    });
    const app = express();
    // Mounted: Express strips /api from req.url; Tollgate must check the path the client asked for.
    app.use("/api", tg.middleware);
    app.get("/api/health", (req, res) => {
      res.json({ user: req.user ?? null, path: req.tollgate?.path });
    });
    app.get("/api/admin/users", (req, res) => {
      res.json({ user: req.user ?? null });
    });
    served = await listen(app, tg);
  });

  after(async () => {
    await served.close();
    await auth.close();
  });

  test("the route policy sees the whole path, mount point included", async () => {
    const res = await fetch(`${served.url}/api/admin/users`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 403);
  });

  test("a public path does not become public again under a mount point", async () => {
    assert.equal((await fetch(`${served.url}/api/health`)).status, 401);
    const res = await fetch(`${served.url}/api/health`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { user: { principal: "alice", attributes: {} }, path: "/api/health" });
  });
});
