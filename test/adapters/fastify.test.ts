import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Fastify, { type FastifyInstance } from "fastify";
import { tollgatePlugin, type TollgateOptions } from "../../src/adapters/fastify.js";
import { ConfigError } from "../../src/core/errors.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { captureLog } from "../support/log.js";
import { describeAdapterCases, fileAccess, whoami, type AppUnderTest, type StartApp } from "./_cases.js";

async function listen(app: FastifyInstance): Promise<AppUnderTest> {
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  return { url, close: () => app.close() };
}

/** The shared cases against Fastify 5: `app.register(tollgatePlugin, ...)`, `request.user`, `app.tollgate.can`. */
const start: StartApp = async (options, ran) => {
  const app = Fastify();
  await app.register(tollgatePlugin, options);
  for (const path of ["/health", "/v1/whoami", "/v1/telemetry/stats"]) {
    app.get(path, async (request) => {
      ran();
      return whoami(request.user);
    });
  }
  app.get<{ Params: { id: string } }>("/v1/files/:id", async (request) => {
    ran();
    return fileAccess(app.tollgate.can, request.user, request.params.id);
  });
  return listen(app);
};

describeAdapterCases("fastify", start);

describe("fastify: the plugin", () => {
  const TOKEN = "sk-fastify-plugin-0123456789";
  let auth: CustomAuthServer;
  let served: AppUnderTest;
  let app: FastifyInstance;

  before(async () => {
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice" } } });
    app = Fastify();
    await app.register(tollgatePlugin, {
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url, timeout_ms: 2000 } } } },
      log: captureLog("silent").log,
    });
    // Routes declared in a child plugin, registered after Tollgate: guarded all the same.
    await app.register(
      async (child) => {
        child.get("/whoami", async (request) => ({ principal: request.user?.principal ?? null, path: request.tollgate?.path }));
      },
      { prefix: "/v1" },
    );
    served = await listen(app);
  });

  after(async () => {
    await served.close();
    await auth.close();
  });

  test("guards the routes of plugins registered after it, with their prefix", async () => {
    assert.equal((await fetch(`${served.url}/v1/whoami`)).status, 401);
    const res = await fetch(`${served.url}/v1/whoami`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.deepEqual(await res.json(), { principal: "alice", path: "/v1/whoami" });
  });

  test("an unknown route is still authenticated first: no 404 leaks what exists", async () => {
    const res = await fetch(`${served.url}/v1/nothing-here`);
    assert.equal(res.status, 401);
  });

  test("Fastify's onResponse hooks see the refusal", async () => {
    const statuses: number[] = [];
    const watched = Fastify();
    watched.addHook("onResponse", async (_request, reply) => {
      statuses.push(reply.statusCode);
    });
    await watched.register(tollgatePlugin, {
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url } } } },
      log: captureLog("silent").log,
    });
    watched.get("/x", async () => "ok");
    try {
      const res = await watched.inject({ method: "GET", url: "/x" });
      assert.equal(res.statusCode, 401);
      assert.equal(res.headers["www-authenticate"], 'Bearer realm="tollgate"');
      assert.deepEqual(statuses, [401]);
    } finally {
      await watched.close();
    }
  });

  test("an invalid configuration fails the registration with a ConfigError", async () => {
    const broken = Fastify();
    const config = { server: { auth: { provider_config: { type: "custom", endpiont: "x" } } } } as unknown as TollgateOptions["config"];
    await assert.rejects(
      async () => {
        await broken.register(tollgatePlugin, { config, log: captureLog("silent").log });
      },
      (err: unknown) => err instanceof ConfigError && err.issues.includes("server.auth.provider_config.endpiont: unknown key"),
    );
    await broken.close();
  });
});
