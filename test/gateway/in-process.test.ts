import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { request } from "undici";
import { validateConfig } from "../../src/core/config/load.js";
import type { Config } from "../../src/core/config/schema.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import { startDemoUpstream, type DemoUpstream } from "../../src/demo/upstream.js";
import { startGenerations } from "../../src/gateway/generations.js";
import { createOwnEndpoints } from "../../src/gateway/own-endpoints.js";
import { createGateway, type Gateway } from "../../src/gateway/server.js";
import { captureLog } from "../support/log.js";

/*
 * The gateway in this process (createGateway, no CLI): what the end-to-end
 * tests cannot see from outside, the generations' parts being carried over
 * and released, and a filtered list paged through the upstream.
 */

const folder = mkdtempSync(join(tmpdir(), "tollgate-in-process-"));
let upstream: DemoUpstream;

before(async () => {
  upstream = await startDemoUpstream();
});
after(async () => {
  await upstream.close();
  rmSync(folder, { recursive: true, force: true });
});

function config(quotaDb: string, requests = 100): Config {
  return validateConfig(
    {
      server: {
        port: 0,
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user" } },
        quota: { kvstore: { type: "sqlite", db_path: join(folder, quotaDb) }, period: "minute", authenticated_max_requests: requests },
      },
      upstream: { url: upstream.url },
      storage: { type: "sqlite", db_path: join(folder, "records.db") },
    },
    "test config",
  );
}

/** What /ready would say of the quota store a generation holds. */
async function quotaStoreReason(ping: () => Promise<{ name: string; failure?: { reason: string } | undefined }[]>): Promise<string | undefined> {
  const check = (await ping()).find((c) => c.name === "quota_store");
  return check && (check.failure?.reason ?? "ok");
}

describe("generations in the gateway", () => {
  test("a retired generation keeps its parts for the request it still serves and closes them when that request ends; an unchanged part is carried over", async () => {
    const { log } = captureLog();
    const own = createOwnEndpoints({ metrics: config("q1.db").metrics, renderMetrics: async () => "", metricsContentType: "text/plain", log });
    const generations = await startGenerations({ config: config("q1.db"), log, store: undefined, provider: undefined, own, observers: {} });
    const first = generations.enter(); // a request in flight on the first generation

    await generations.reload(config("q2.db"));
    const second = generations.current;
    assert.notEqual(second, first);
    assert.notEqual(second.core.quotaStore, first.core.quotaStore, "another kvstore: another store");
    assert.equal(second.router.upstreams[0], first.router.upstreams[0], "the same upstream: the pool is carried over");
    assert.equal(await quotaStoreReason(first.core.ping), "ok", "retired, but its request still runs: open");

    generations.leave(first);
    await generations.reload(config("q2.db", 50)); // releases nothing in use: the second generation had no request
    const third = generations.current;
    assert.equal(third.core.quotaStore, second.core.quotaStore, "same kvstore, new limits: carried over");
    assert.notEqual(await quotaStoreReason(first.core.ping), "ok", "its last request ended: the first store is closed");
    assert.equal(await quotaStoreReason(third.core.ping), "ok", "a carried-over store stays open when the generation it came from is released");

    await generations.close();
    assert.notEqual(await quotaStoreReason(third.core.ping), "ok", "closed with the gateway");
  });
});

describe("a filtered list in the gateway", () => {
  let gateway: Gateway;
  let url: string;

  before(async () => {
    const { log } = captureLog("warn");
    gateway = await createGateway({ config: config("list.db"), log, store: await openRecordStore(config("list.db").storage) });
    ({ url } = await gateway.listen());
  });
  after(() => gateway.close());

  async function call(user: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    const res = await request(`${url}${path}`, {
      method: method as "GET",
      headers: { "x-user": user, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
  }

  test("a page of a user's own vector stores is filled from as many upstream pages as it takes, and says whether more remain", async () => {
    const created: Record<string, string[]> = { alice: [], bob: [] };
    // Bob's stores fill the upstream's first pages; Alice's come after.
    for (const user of ["bob", "bob", "bob", "bob", "bob", "alice", "bob", "alice", "alice"]) {
      const { status, json } = await call(user, "POST", "/v1/vector_stores", { name: `${user}'s` });
      assert.equal(status, 200);
      created[user]!.push(json.id as string);
    }
    const asked = upstream.requests.length;
    const page = await call("alice", "GET", "/v1/vector_stores?limit=2");
    assert.equal(page.status, 200);
    assert.deepEqual((page.json.data as { id: string }[]).map((o) => o.id), created.alice!.slice(0, 2));
    assert.equal(page.json.has_more, true, "Alice has a third store");
    assert.equal(page.json.last_id, created.alice![1]);
    const lists = upstream.requests.slice(asked).filter((r) => r.method === "GET" && r.path === "/v1/vector_stores");
    assert.ok(lists.length >= 3, `the gateway paged through the upstream (${lists.length} pages asked)`);
    assert.ok(lists.slice(1).every((r) => new URLSearchParams(r.query).has("after")), "each further page continues after the last one read");

    const next = await call("alice", "GET", `/v1/vector_stores?limit=2&after=${created.alice![1]}`);
    assert.deepEqual((next.json.data as { id: string }[]).map((o) => o.id), [created.alice![2]]);
    assert.equal(next.json.has_more, false);
  });
});

describe("the gateway on node:http", () => {
  let gateway: Gateway;
  let url: string;

  before(async () => {
    const { log } = captureLog("warn");
    const open = validateConfig({ server: { port: 0, resources: { unlisted: "allow" } }, upstream: { url: upstream.url } }, "test config");
    gateway = await createGateway({ config: open, log });
    ({ url } = await gateway.listen());
  });
  after(() => gateway.close());

  test("a Content-Type that does not parse is refused with 415 and never forwarded; a valid or absent one is", async () => {
    const send = async (contentType: string | undefined, id: string) => {
      const res = await request(`${url}/v1/echo/ct`, {
        method: "POST",
        headers: { "x-request-id": id, ...(contentType === undefined ? {} : { "content-type": contentType }) },
        body: "{}",
      });
      const text = await res.body.text();
      return { status: res.statusCode, text, forwarded: upstream.requests.some((r) => r.headers["x-request-id"] === id) };
    };
    const refused = await send(";;", "ct-invalid");
    assert.equal(refused.status, 415);
    assert.match(refused.text, /"code":"unsupported_media_type"/);
    assert.equal(refused.forwarded, false);
    for (const [contentType, id] of [["application/json; charset=utf-8", "ct-valid"], [undefined, "ct-absent"]] as const) {
      const answer = await send(contentType, id);
      assert.notEqual(answer.status, 415, `${contentType}: ${answer.text}`);
      assert.equal(answer.forwarded, true, `${contentType} reached the upstream`);
    }
  });

  test("a method the gateway never forwards is a 405 in the OpenAI envelope; idle keep-alive connections are kept 72 s", async () => {
    const res = await request(`${url}/v1/models`, { method: "TRACE" as "GET" });
    assert.equal(res.statusCode, 405);
    assert.match(await res.body.text(), /"code":"method_not_allowed"/);
    assert.equal(res.headers["keep-alive"], "timeout=72");
  });
});
