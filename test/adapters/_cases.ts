import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import type { Server } from "node:http";
import net, { type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Can, Owner, TollgateOptions } from "../../src/adapters/node.js";
import type { ConfigInput } from "../../src/core/config/schema.js";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { User } from "../../src/core/user.js";
import { closedPort } from "../support/refusal.js";
import { captureLog } from "../support/log.js";
import { clearOfWindowEnd } from "../support/windows.js";

/**
 * The one table of cases every adapter (node:http, Express, Fastify, Hono) is
 * run against, each with the real framework listening on 127.0.0.1 and the
 * real `api_key` provider, SQLite record and quota stores in a temp dir.
 *
 * An adapter's test file starts its framework's app with {@link StartApp}:
 * Tollgate as that framework's middleware/plugin, and these routes, whose
 * handlers read the user the framework's own way and first call the `ran`
 * they were given, so that every refusal case can prove the framework's
 * handler never ran:
 *
 *   GET /health              200 whoami(user)          (a public path)
 *   GET /v1/whoami           200 whoami(user)
 *   GET /v1/telemetry/stats  200 whoami(user)          (requires the telemetry.read scope)
 *   GET /v1/files/:id        200 fileAccess(can, user, id)
 */

/** An app listening on 127.0.0.1. */
export interface AppUnderTest {
  /** `http://127.0.0.1:<port>` */
  url: string;
  close(): Promise<void>;
}

/**
 * Starts the framework's app with Tollgate configured by `options`, serving
 * the routes above; each of their handlers calls `ran()` before anything else.
 */
export type StartApp = (options: TollgateOptions, ran: () => void) => Promise<AppUnderTest>;

/** Who owns each file: f1 a teammate of alice's (ml), f2 someone in web, f3 nobody. */
export const OWNERS: Readonly<Record<string, Owner | undefined>> = {
  f1: { principal: "dave", attributes: { teams: ["ml"] } },
  f2: { principal: "erin", attributes: { teams: ["web"] } },
  f3: undefined,
};

/** An app under test from a listening node:http server: its URL, and a close() that cuts its connections, then closes `owned`. */
export function servedBy(server: Server, owned: { close(): Promise<void> }): AppUnderTest {
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await owned.close();
    },
  };
}

/** What the whoami routes answer. */
export function whoami(user: User | undefined): { principal: string | null; attributes: User["attributes"] | null } {
  return { principal: user?.principal ?? null, attributes: user?.attributes ?? null };
}

/** What GET /v1/files/:id answers: the access policy's decisions through the adapter's `can`. */
export function fileAccess(can: Can, user: User | undefined, id: string): { id: string; read: boolean; delete: boolean } {
  const owner = OWNERS[id];
  return { id, read: can(user, "read", `file::${id}`, owner), delete: can(user, "delete", `file::${id}`, owner) };
}

type AuthInput = NonNullable<NonNullable<ConfigInput["server"]>["auth"]>;

const POLICY: Omit<AuthInput, "provider_config"> = {
  access_policy: [
    { permit: { actions: ["read", "update", "delete"] }, when: "user is owner", description: "owners do anything" },
    { permit: { actions: ["read"] }, when: "user in owners teams", description: "teammates may read" },
    { permit: { actions: ["read"], resource: "file::*" }, when: "resource is unowned", description: "unowned files are readable" },
  ],
  route_policy: [{ permit: { paths: "*" }, when: "user with user in roles", description: "users only" }],
  required_scopes: { "/v1/telemetry/*": "telemetry.read" },
};

type Principal = "alice" | "bob" | "carol" | "dave" | "mallory";

/** A request as an OpenAI error envelope's reader sees it. */
interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
}

async function get(url: string, key?: string): Promise<Answer> {
  const res = await fetch(url, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: compared as text
  }
  return { status: res.status, headers: res.headers, body };
}

function errorOf(answer: Answer): { message: string; type: string; code: string; param: null } {
  const body = answer.body as { error?: { message: string; type: string; code: string; param: null } };
  assert.ok(body.error, `expected an OpenAI error envelope, got ${JSON.stringify(answer.body)}`);
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
  return body.error;
}

/** Sends a request exactly as written over a raw socket (two Authorization headers, which fetch would merge). */
export async function rawRequest(url: string, head: string): Promise<{ status: number; head: string; body: string }> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  socket.write(head);
  const chunks: Buffer[] = [];
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString("utf8");
  const split = text.indexOf("\r\n\r\n");
  const headText = split === -1 ? text : text.slice(0, split);
  return { status: Number(headText.split(" ")[1]), head: headText, body: split === -1 ? "" : text.slice(split + 4) };
}

/** Runs the shared table against one adapter. */
export function describeAdapterCases(name: string, start: StartApp): void {
  describe(`${name}: the shared adapter cases`, () => {
    const dir = mkdtempSync(join(tmpdir(), `tollgate-${name.replace(/\W/g, "")}-`));
    const storage = { type: "sqlite" as const, db_path: join(dir, "records.db") };
    const keys = {} as Record<Principal, string>;
    const captured = captureLog("debug");
    let app: AppUnderTest;
    let down: AppUnderTest;
    /** How many times a handler of `app` / `down` ran. */
    const handlerRuns = { app: 0, down: 0 };

    /** Runs `request` and asserts that no handler of either app ran meanwhile: Tollgate answered alone. */
    async function refused<T>(request: () => Promise<T>): Promise<T> {
      const before = { ...handlerRuns };
      const answer = await request();
      assert.deepEqual(handlerRuns, before, "the framework's handler ran for a refused request");
      return answer;
    }

    before(async () => {
      const store = await openRecordStore(storage);
      try {
        const users: Record<Principal, Record<string, string[]>> = {
          alice: { roles: ["user"], teams: ["ml"] },
          bob: { roles: ["user"], teams: ["web"], scopes: ["telemetry.read"] },
          carol: { roles: ["user", "tight"], teams: ["ops"] },
          dave: { roles: ["user"], teams: ["ml"] },
          mallory: { teams: ["ml"] },
        };
        for (const [principal, attributes] of Object.entries(users)) {
          keys[principal as Principal] = (await createApiKey(store, { principal, attributes })).key;
        }
      } finally {
        await store.close();
      }
      app = await start({
        config: {
          server: {
            public_paths: ["/health"],
            auth: { provider_config: { type: "api_key" }, ...POLICY },
            quota: {
              kvstore: { type: "sqlite", db_path: join(dir, "quota.db") },
              authenticated_max_requests: 1000,
              period: "minute",
              tiers: [{ name: "tight", when: "user with tight in roles", limits: [{ requests: 2, period: "minute" }] }],
            },
          },
          storage,
        },
        log: captured.log,
      }, () => handlerRuns.app++);
      down = await start({
        config: {
          server: {
            public_paths: ["/health"],
            auth: { provider_config: { type: "custom", endpoint: `http://127.0.0.1:${await closedPort()}/validate`, timeout_ms: 2000 } },
          },
        },
        log: captureLog("silent").log,
      }, () => handlerRuns.down++);
    });

    after(async () => {
      await app?.close();
      await down?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("a request without a credential gets a 401 OpenAI error envelope with a Bearer challenge", async () => {
      const res = await refused(() => get(`${app.url}/v1/whoami`));
      assert.equal(res.status, 401);
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate"');
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      const error = errorOf(res);
      assert.equal(error.code, "missing_credential");
      assert.equal(error.type, "authentication_error");
    });

    test("an unknown key gets a 401 invalid_token with its challenge", async () => {
      const res = await refused(() => get(`${app.url}/v1/whoami`, "tg_not-a-key"));
      assert.equal(res.status, 401);
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate", error="invalid_token"');
      assert.equal(errorOf(res).code, "invalid_token");
    });

    test("a good key reaches the handler, which sees the user the framework's way, with RateLimit headers on the answer", async () => {
      const before = handlerRuns.app;
      const res = await get(`${app.url}/v1/whoami`, keys.alice);
      assert.equal(res.status, 200);
      assert.equal(handlerRuns.app, before + 1, "the handler ran once (what the refusal cases count)");
      assert.deepEqual(res.body, { principal: "alice", attributes: { roles: ["user"], teams: ["ml"] } });
      assert.match(res.headers.get("ratelimit") ?? "", /;r=\d+;t=\d+/);
      assert.ok(res.headers.get("ratelimit-policy"));
    });

    test("a public path skips authentication: the handler sees no user", async () => {
      const res = await get(`${app.url}/health`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { principal: null, attributes: null });
    });

    test("a user the route_policy does not permit gets a 403 route_denied", async () => {
      const res = await refused(() => get(`${app.url}/v1/whoami`, keys.mallory));
      assert.equal(res.status, 403);
      const error = errorOf(res);
      assert.equal(error.code, "route_denied");
      assert.equal(error.type, "permission_error");
    });

    test("a route with a required scope refuses a user without it (403 missing_scope) and serves one with it", async () => {
      const denied = await refused(() => get(`${app.url}/v1/telemetry/stats`, keys.alice));
      assert.equal(denied.status, 403);
      assert.equal(errorOf(denied).code, "missing_scope");
      const served = await get(`${app.url}/v1/telemetry/stats`, keys.bob);
      assert.equal(served.status, 200);
      assert.equal((served.body as { principal: string }).principal, "bob");
    });

    test("a client over its quota gets a 429 with Retry-After and RateLimit headers", async () => {
      await clearOfWindowEnd("minute", 10_000);
      assert.equal((await get(`${app.url}/v1/whoami`, keys.carol)).status, 200);
      assert.equal((await get(`${app.url}/v1/whoami`, keys.carol)).status, 200);
      const res = await refused(() => get(`${app.url}/v1/whoami`, keys.carol));
      assert.equal(res.status, 429);
      assert.match(res.headers.get("retry-after") ?? "", /^[1-9]\d*$/);
      assert.match(res.headers.get("ratelimit") ?? "", /;r=0;/);
      assert.ok(res.headers.get("ratelimit-policy"));
      const error = errorOf(res);
      assert.equal(error.code, "rate_limit_exceeded");
      assert.equal(error.message, "Quota exceeded");
    });

    test("can() lets a teammate of the owner read but not delete", async () => {
      const res = await get(`${app.url}/v1/files/f1`, keys.alice);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { id: "f1", read: true, delete: false });
    });

    test("can() lets the owner delete", async () => {
      assert.deepEqual((await get(`${app.url}/v1/files/f1`, keys.dave)).body, { id: "f1", read: true, delete: true });
    });

    test("can() denies a user who shares nothing with the owner", async () => {
      assert.deepEqual((await get(`${app.url}/v1/files/f2`, keys.alice)).body, { id: "f2", read: false, delete: false });
    });

    test("can() without an owner is about an unowned resource", async () => {
      assert.deepEqual((await get(`${app.url}/v1/files/f3`, keys.alice)).body, { id: "f3", read: true, delete: false });
    });

    test("two Authorization headers are refused, even when the first is a good key", async () => {
      const res = await refused(() =>
        rawRequest(
          app.url,
          `GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${keys.alice}\r\nAuthorization: Bearer other\r\nConnection: close\r\n\r\n`,
        ),
      );
      assert.equal(res.status, 401);
      assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, "invalid_request");
    });

    test("the identity service being down is a 503 with Retry-After, not a pass", async () => {
      const res = await refused(() => get(`${down.url}/v1/whoami`, "some-key"));
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(errorOf(res).code, "identity_provider_unavailable");
    });

    test("nothing logged contains a key", () => {
      const text = captured.text();
      // The requests those keys made were logged (their access decisions), so a line carrying a key would be in `text`.
      assert.match(text, /"principal":"alice",.*"msg":"access decision"/);
      for (const key of [...Object.values(keys), "tg_not-a-key"]) assert.ok(!text.includes(key), "a key reached the log");
    });
  });
}
