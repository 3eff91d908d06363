import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createTollgate, type Tollgate, type TollgateOptions } from "../../src/adapters/node.js";
import { ConfigError } from "../../src/core/errors.js";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { startExample } from "../support/example.js";
import { rawRequest } from "./_cases.js";
import { captureLog } from "../support/log.js";

const TOKEN = "sk-node-adapter-0123456789";

interface Served {
  url: string;
  /** Resolves each time a handler finishes, with how `authenticate` ended. */
  handled: Array<{ at: number; passed: boolean }>;
  close(): Promise<void>;
}

/** A plain node:http server that answers what the pipeline established, as the README's example does. */
async function serve(tollgate: Tollgate): Promise<Served> {
  const handled: Served["handled"] = [];
  const server = http.createServer(async (req, res) => {
    const ctx = await tollgate.authenticate(req, res);
    handled.push({ at: Date.now(), passed: ctx !== undefined });
    if (!ctx) return;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ path: ctx.path, query: ctx.query, public: ctx.public, user: ctx.user ?? null }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    handled,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("createTollgate with a node:http server and the custom provider", () => {
  let auth: CustomAuthServer;
  let tollgate: Tollgate;
  let served: Served;
  const captured = captureLog("debug");

  before(async () => {
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice", attributes: { roles: ["admin"] } } } });
    tollgate = await createTollgate({
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url, timeout_ms: 2000 } } } },
      log: captured.log,
    });
    served = await serve(tollgate);
  });

  after(async () => {
    await served.close();
    await tollgate.close();
    await auth.close();
  });

  test("a request without a credential gets a 401 OpenAI error envelope with a Bearer challenge", async () => {
    const res = await fetch(`${served.url}/v1/models`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate"');
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(await res.json(), {
      error: {
        message: "Authentication required. Please provide your API key as a Bearer token in the Authorization header",
        type: "authentication_error",
        code: "missing_credential",
        param: null,
      },
    });
  });

  test("a known token reaches the handler with the user the endpoint named", async () => {
    const res = await fetch(`${served.url}/v1//models/?limit=2`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      path: "/v1/models",
      query: "limit=2",
      public: false,
      user: { principal: "alice", attributes: { roles: ["admin"] } },
    });
  });

  test("the endpoint receives the request's path, headers and params, never its Authorization header", async () => {
    auth.requests.length = 0;
    await fetch(`${served.url}/v1/chat/completions?a=1&a=2`, { headers: { authorization: `Bearer ${TOKEN}`, "x-request-id": "r-1" } });
    const call = auth.requests[0]!;
    assert.equal(call.api_key, TOKEN);
    assert.equal(call.request.path, "/v1/chat/completions");
    assert.deepEqual(call.request.params, { a: ["1", "2"] });
    assert.equal(call.request.headers["x-request-id"], "r-1");
    assert.equal("authorization" in call.request.headers, false);
  });

  test("an unknown token gets a 401 'Authentication failed: 401'", async () => {
    const res = await fetch(`${served.url}/v1/models`, { headers: { authorization: "Bearer not-a-known-token" } });
    assert.equal(res.status, 401);
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate", error="invalid_token"');
    const body = (await res.json()) as { error: { message: string; code: string } };
    assert.equal(body.error.message, "Authentication failed: 401");
    assert.equal(body.error.code, "invalid_token");
  });

  for (const path of ["/health", "/v1/health/", "/v1//version"]) {
    test(`${path} is public: it passes without a credential`, async () => {
      const res = await fetch(`${served.url}${path}`);
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { public: boolean }).public, true);
    });
  }

  test("a path that merely ends in /health is not public", async () => {
    const res = await fetch(`${served.url}/x/health`);
    assert.equal(res.status, 401);
  });

  test("two Authorization headers are refused, even when the first one is valid", async () => {
    const res = await rawRequest(
      served.url,
      `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nAuthorization: Bearer other\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(res.status, 401);
    const body = JSON.parse(res.body) as { error: { message: string } };
    assert.equal(body.error.message, "Invalid Authorization header format");
  });

  test("a path that cannot be normalised gets a 400 envelope", async () => {
    const res = await rawRequest(served.url, `GET /v1/files%2Fsecret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n\r\n`);
    assert.equal(res.status, 400);
    assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, "invalid_path");
  });

  test("an identity service answering 500 gets the client a 503 with Retry-After", async () => {
    auth.setBehaviour({ status: 500 });
    try {
      const res = await fetch(`${served.url}/v1/models`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(((await res.json()) as { error: { message: string } }).error.message, "Authentication service error");
    } finally {
      auth.setBehaviour({ status: undefined });
    }
  });

  test("a client that hangs up while the identity service is slow frees its handler at once", async () => {
    auth.setBehaviour({ delayMs: 3000 });
    try {
      const before = served.handled.length;
      const started = Date.now();
      const { hostname, port } = new URL(served.url);
      const socket = net.connect(Number(port), hostname);
      socket.write(`GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      socket.destroy();
      while (served.handled.length === before && Date.now() - started < 2500) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal(served.handled.length, before + 1, "the handler was still waiting");
      assert.equal(served.handled.at(-1)!.passed, false);
      assert.ok(served.handled.at(-1)!.at - started < 1500);
    } finally {
      auth.setBehaviour({ delayMs: undefined });
    }
  });

  test("nothing logged during these requests contains the token", () => {
    assert.ok(!captured.text().includes(TOKEN));
  });
});

describe("createTollgate with the upstream_header provider", () => {
  let tollgate: Tollgate;
  let served: Served;

  before(async () => {
    tollgate = await createTollgate({
      config: { server: { auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } } } },
      log: captureLog("silent").log,
    });
    served = await serve(tollgate);
  });

  after(async () => {
    await served.close();
    await tollgate.close();
  });

  test("the identity header from a trusted peer becomes the user", async () => {
    const res = await fetch(`${served.url}/v1/models`, { headers: { "x-user": "carol" } });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { user: { principal: string } }).user.principal, "carol");
  });

  test("an identity header sent twice is refused, not merged", async () => {
    const res = await rawRequest(served.url, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-User: mallory\r\nX-User: carol\r\nConnection: close\r\n\r\n");
    assert.equal(res.status, 401);
  });
});

describe("createTollgate with the api_key provider", () => {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-node-adapter-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("opens the record store from storage, authenticates its keys, and closes it", async () => {
    const storage = { type: "sqlite" as const, db_path: join(dir, "keys.db") };
    const setup = await openRecordStore(storage);
    const { key, record } = await createApiKey(setup, { principal: "dave", attributes: { teams: ["ml"] } });
    await setup.close();

    const tollgate = await createTollgate({ config: { server: { auth: { provider_config: { type: "api_key" } } }, storage }, log: captureLog("silent").log });
    const served = await serve(tollgate);
    try {
      const ok = await fetch(`${served.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(ok.status, 200);
      // The user says which key it came with (its id: usage is counted per key, and a handler may want it).
      assert.deepEqual(((await ok.json()) as { user: unknown }).user, { principal: "dave", attributes: { teams: ["ml"] }, apiKey: { id: record.id } });
      const refused = await fetch(`${served.url}/v1/models`, { headers: { authorization: "Bearer tg_wrong" } });
      assert.equal(refused.status, 401);
    } finally {
      await served.close();
      await tollgate.close();
    }
  });
});

describe("createTollgate options", () => {
  const silent = captureLog("silent").log;

  test("a config file is loaded, with env substitution", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tollgate-node-config-"));
    try {
      const file = join(dir, "tollgate.yaml");
      writeFileSync(file, "server:\n  public_paths: [/ready]\n  auth:\n    provider_config: {type: custom, endpoint: '${env.TG_TEST_ENDPOINT:=http://127.0.0.1:9/validate}'}\n");
      const tollgate = await createTollgate({ configFile: file, log: silent });
      try {
        assert.deepEqual(tollgate.config.server.public_paths, ["/ready"]);
        assert.equal(tollgate.config.server.auth?.provider_config?.type, "custom");
      } finally {
        await tollgate.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an invalid config object is a ConfigError naming the path", async () => {
    await assert.rejects(
      createTollgate({ config: { server: { auth: { provider_config: { type: "custom", endpiont: "x" } } } } as unknown as TollgateOptions["config"], log: silent }),
      (err: unknown) => err instanceof ConfigError && err.issues.includes("server.auth.provider_config.endpiont: unknown key"),
    );
  });

  test("config and configFile together are refused", async () => {
    await assert.rejects(createTollgate({ config: {}, configFile: "x.yaml", log: silent }), /either config or configFile/);
  });

  test("neither config nor configFile is refused", async () => {
    await assert.rejects(createTollgate({ log: silent }), /give config/);
  });

  test("without server.auth every request passes with no user, and a warning says so", async () => {
    const captured = captureLog("warn");
    const tollgate = await createTollgate({ config: {}, log: captured.log });
    const served = await serve(tollgate);
    try {
      const res = await fetch(`${served.url}/v1/models`);
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { user: unknown }).user, null);
      assert.match(captured.text(), /authentication is off/);
    } finally {
      await served.close();
      await tollgate.close();
    }
  });

  test("close() can be called twice", async () => {
    const tollgate = await createTollgate({ config: {}, log: silent });
    await tollgate.close();
    await tollgate.close();
  });
});

describe("the package entry point", () => {
  test("exports the library API", async () => {
    const tollgate = await import("../../src/index.js");
    for (const name of [
      "createTollgate", "toPipelineRequest", "sendError", "createPipeline", "authorizationHeaders", "canonicalTarget",
      "canonicalPath", "parseBearer", "toErrorResponse", "AuthError", "IdentityUnavailableError", "TollgateError",
      "ConfigError", "makeUser", "parseConfig", "loadConfig", "validateConfig", "defaultConfig", "configJsonSchema",
      "createProvider", "createCustomProvider", "createUpstreamHeaderProvider", "openRecordStore", "createLogger", "VERSION",
    ]) {
      assert.ok(name in tollgate, `missing export ${name}`);
    }
  });

  test("openRecordStore opens the store storage describes", async () => {
    const { openRecordStore: open } = await import("../../src/index.js");
    const dir = mkdtempSync(join(tmpdir(), "tollgate-index-"));
    try {
      const store = await open({ type: "sqlite", db_path: join(dir, "x.db") });
      assert.equal(await store.countActiveApiKeys(Date.now()), 0);
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("examples/node-http.ts", () => {
  test("runs, refuses a request without a key, serves one with a key, and exits 0 on SIGTERM", async () => {
    const auth = await startCustomAuth({ users: { [TOKEN]: { principal: "erin" } } });
    const example = await startExample("node-http.ts", auth.url);
    const url = example.url;
    try {
      assert.equal((await fetch(`${url}/v1/hello`)).status, 401);
      assert.equal((await fetch(`${url}/health`)).status, 200);
      const ok = await fetch(`${url}/v1/hello`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as { principal: string }).principal, "erin");
      assert.equal(await example.stop(), 0, example.stderr());
    } finally {
      example.kill();
      await auth.close();
    }
  });
});
