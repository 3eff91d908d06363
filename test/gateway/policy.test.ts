import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import http from "node:http";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import OpenAI, { toFile } from "openai";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { scopedPostgres, type ScopedPostgres } from "../support/postgres.js";
import { requireService } from "../support/services.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { openSqliteDatabase } from "../../src/core/stores/sqlite-driver.js";

// Multi-tenant resource protection end to end: the official OpenAI client,
// a real gateway process with the custom auth provider, the demo upstream.
// The same suite runs on the SQLite and the PostgreSQL record store.
// Every refusal also proves, by a tag the upstream records, that the request
// never reached the upstream.

const TOKENS = {
  alice: "tok-alice-9f3kQ",
  carol: "tok-carol-a81Lz", // alice's teammate
  bob: "tok-bob-77xYp",
  admin: "tok-admin-Qm20v",
} as const;
type Who = keyof typeof TOKENS;

const USERS = {
  [TOKENS.alice]: { principal: "alice", attributes: { roles: ["user"], teams: ["ml"] } },
  [TOKENS.carol]: { principal: "carol", attributes: { roles: ["user"], teams: ["ml"] } },
  [TOKENS.bob]: { principal: "bob", attributes: { roles: ["user"], teams: ["web"] } },
  [TOKENS.admin]: { principal: "root", attributes: { roles: ["admin"], teams: ["ops"], scopes: ["scoped:use"] } },
};

/** The multi-tenant policy of the README's worked example. */
export const POLICY = {
  access_policy: [
    { forbid: { actions: ["read"], resource: "model::demo-embed" }, unless: "user with admin in roles", description: "demo-embed is for admins" },
    { permit: { actions: ["read"], resource: "model::*" }, description: "every user may use the other models" },
    { forbid: { actions: ["create", "read", "update", "delete"], resource: "vector_store::*" }, unless: "user with admin in roles", description: "vector stores are for admins" },
    { permit: { actions: ["create"] }, description: "anyone may create" },
    { permit: { actions: ["read", "update", "delete"] }, when: "user is owner", description: "owners do anything" },
    { permit: { actions: ["read"] }, when: ["user in owners teams"], description: "teammates may read" },
  ],
  route_policy: [
    { forbid: { paths: ["/api/version*"] }, unless: "user with admin in roles", description: "admins only" },
    { permit: { paths: "*" } },
  ],
  required_scopes: { "/api/status*": "scoped:use" },
};

/**
 * Sends `method path` exactly as written (fetch would normalise it), tagged
 * with `requestId`: the gateway sends the client's X-Request-Id upstream, so
 * the upstream's log tells whether this very request reached it.
 */
function rawRequest(base: string, method: string, path: string, token: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers: { authorization: `Bearer ${token}`, ...headers } }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

function suite(storage: "sqlite" | "postgres") {
  describe(`access policy through the gateway (${storage} record store)`, { timeout: 180_000 }, () => {
    let upstream: UpstreamProcess;
    let auth: CustomAuthServer;
    let gateway: GatewayProcess | undefined;
    let pg: ScopedPostgres | undefined;
    let skipped = false;
    const client = (who: Who) => new OpenAI({ baseURL: `${gateway!.url}/v1`, apiKey: TOKENS[who], maxRetries: 0, timeout: 10_000 });

    before(async (t) => {
      if (storage === "postgres") {
        const url = await requireService(t as unknown as TestContext, "postgres");
        if (!url) {
          skipped = true;
          return;
        }
        pg = await scopedPostgres(url, "policy");
      }
      upstream = await startUpstreamProcess();
      auth = await startCustomAuth({ users: USERS });
      gateway = await startGateway({
        config: {
          server: { auth: { provider_config: { type: "custom", endpoint: auth.url }, ...POLICY } },
          upstream: { url: upstream.url },
          ...(pg ? { storage: { type: "postgres", url: pg.url } } : {}),
        },
      });
    });

    after(async () => {
      await gateway?.close();
      await auth?.close();
      await upstream?.close();
      await pg?.drop();
    });

    const it = (name: string, fn: () => Promise<void>) =>
      test(name, { timeout: 30_000 }, async (t) => {
        if (skipped) return t.skip("postgres not reachable");
        await fn();
      });

    /** The principal the record store holds as owner of `type::id`, read from the store itself; undefined when no row. */
    async function storedOwner(type: string, id: string): Promise<string | undefined> {
      if (pg) {
        const { rows } = await pg.admin.query(`SELECT principal FROM "${pg.schema}".tollgate_owners WHERE type = $1 AND id = $2`, [type, id]);
        return (rows[0] as { principal: string } | undefined)?.principal;
      }
      // The default record store: ./data/tollgate.db beside the config file, which is also the gateway's working directory.
      const db = await openSqliteDatabase(join(gateway!.dir, "data", "tollgate.db"));
      try {
        return db.prepare("SELECT principal FROM tollgate_owners WHERE type = ? AND id = ?").get(type, id)?.principal as string | undefined;
      } finally {
        db.close();
      }
    }

    async function upload(who: Who, text = "hello"): Promise<string> {
      const file = await client(who).files.create({ file: await toFile(Buffer.from(text), `${who}.txt`), purpose: "assistants" });
      return file.id;
    }

    it("a tagged request that passes reaches the upstream with its tag (what the refusal checks here look for)", async () => {
      const { tag, headers } = newTag();
      await client("alice").models.list({ headers });
      await assertForwarded(upstream, tag);
    });

    it("alice uploads a file; bob cannot read, delete or list it", async () => {
      const id = await upload("alice");
      assert.equal((await client("alice").files.retrieve(id)).id, id);
      const { tag, headers } = newTag();
      await assert.rejects(client("bob").files.retrieve(id, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assert.rejects(client("bob").files.content(id, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      // A store-backed resource: a denied delete is the same 404 as a denied read (as in Llama Stack).
      await assert.rejects(client("bob").files.delete(id, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
      const bobs: string[] = [];
      for await (const f of client("bob").files.list()) bobs.push(f.id);
      assert.ok(!bobs.includes(id));
      // Still there: bob's delete never reached the upstream.
      assert.equal((await client("alice").files.retrieve(id)).id, id);
    });

    it("alice's teammate may read and list her file under `user in owners teams`, but not delete it (404, as in Llama Stack)", async () => {
      const id = await upload("alice", "team notes");
      assert.equal((await client("carol").files.retrieve(id)).id, id);
      assert.equal(await (await client("carol").files.content(id)).text(), "team notes");
      const seen: string[] = [];
      for await (const f of client("carol").files.list()) seen.push(f.id);
      assert.ok(seen.includes(id));
      const { tag, headers } = newTag();
      await assert.rejects(
        client("carol").files.delete(id, { headers }),
        (e: unknown) => e instanceof OpenAI.NotFoundError && e.message.includes(`File '${id}' not found.`),
      );
      await assertNotForwarded(upstream, tag);
    });

    it("the owner deletes her file, and its owner record goes with it (read from the store)", async () => {
      const id = await upload("alice");
      assert.equal(await storedOwner("file", id), "alice");
      // A refused delete leaves the record alone.
      await assert.rejects(client("bob").files.delete(id), (e: unknown) => e instanceof OpenAI.NotFoundError);
      assert.equal(await storedOwner("file", id), "alice");
      const deleted = await client("alice").files.delete(id);
      assert.equal(deleted.deleted, true);
      assert.equal(await storedOwner("file", id), undefined);
      await assert.rejects(client("alice").files.retrieve(id), (e: unknown) => e instanceof OpenAI.NotFoundError);
    });

    it("a filtered list never ends early: every readable file comes back, page by page", async () => {
      const mine: string[] = [];
      for (let i = 0; i < 4; i++) {
        for (let j = 0; j < 3; j++) await upload("bob", `noise ${i}.${j}`);
        mine.push(await upload("alice", `page ${i}`));
      }
      const pages: number[] = [];
      const seen: string[] = [];
      let page = await client("alice").files.list({ limit: 2 });
      for (;;) {
        pages.push(page.data.length);
        seen.push(...page.data.map((f) => f.id));
        if (!page.hasNextPage()) break;
        page = await page.getNextPage();
      }
      for (const id of mine) assert.ok(seen.includes(id), `missing ${id}`);
      assert.ok(seen.every((id) => !id.startsWith("bob")));
      // Full pages until the last one: the filter fetched further upstream pages.
      assert.ok(pages.slice(0, -1).every((n) => n === 2), `pages ${pages.join(",")}`);
      const bobs = new Set<string>();
      for await (const f of client("bob").files.list({ limit: 3 })) bobs.add(f.id);
      for (const id of mine) assert.ok(!bobs.has(id));
    });

    it("an admin-only vector-store rule holds", async () => {
      const { tag, headers } = newTag();
      await assert.rejects(client("alice").vectorStores.create({ name: "mine" }, { headers }), (e: unknown) => e instanceof OpenAI.PermissionDeniedError);
      const vs = await client("admin").vectorStores.create({ name: "ops" });
      assert.equal((await client("admin").vectorStores.retrieve(vs.id)).id, vs.id);
      await assert.rejects(client("bob").vectorStores.retrieve(vs.id, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
      const listed: string[] = [];
      for await (const v of client("bob").vectorStores.list()) listed.push(v.id);
      assert.deepEqual(listed, []);
    });

    it("a forbidden model answers 404 and never reaches the upstream", async () => {
      const { tag, headers } = newTag();
      await assert.rejects(
        client("alice").chat.completions.create({ model: "demo-embed", messages: [{ role: "user", content: "hi" }] }, { headers }),
        (e: unknown) => e instanceof OpenAI.NotFoundError,
      );
      await assert.rejects(client("alice").embeddings.create({ model: "demo-embed", input: "x" }, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
      const ok = await client("admin").embeddings.create({ model: "demo-embed", input: "x" });
      assert.equal(ok.data.length, 1);
      const fine = await client("alice").chat.completions.create({ model: "demo-small", messages: [{ role: "user", content: "hi" }] });
      assert.equal(fine.choices[0]?.message.content, "You said: hi");
    });

    it("models.list is filtered and models.retrieve of a forbidden model is a 404", async () => {
      const ids: string[] = [];
      for await (const m of client("alice").models.list()) ids.push(m.id);
      assert.deepEqual(ids, ["demo-small"]);
      const { tag, headers } = newTag();
      await assert.rejects(client("alice").models.retrieve("demo-embed", { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
      const all: string[] = [];
      for await (const m of client("admin").models.list()) all.push(m.id);
      assert.deepEqual(all, ["demo-small", "demo-embed"]);
    });

    it("a response created by alice is hers: bob gets 404", async () => {
      const r = await client("alice").responses.create({ model: "demo-small", input: "hello" });
      assert.equal((await client("alice").responses.retrieve(r.id)).id, r.id);
      const { tag, headers } = newTag();
      await assert.rejects(client("bob").responses.retrieve(r.id, {}, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assert.rejects(client("alice").responses.create({ model: "demo-embed", input: "x" }, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
    });

    it("a streamed response is recorded from its first event", async () => {
      const stream = await client("alice").responses.create({ model: "demo-small", input: "stream me", stream: true });
      let id: string | undefined;
      for await (const event of stream) if (event.type === "response.created") id = event.response.id;
      assert.ok(id);
      assert.equal((await client("alice").responses.retrieve(id)).id, id);
      const { tag, headers } = newTag();
      await assert.rejects(client("bob").responses.retrieve(id, {}, { headers }), (e: unknown) => e instanceof OpenAI.NotFoundError);
      await assertNotForwarded(upstream, tag);
    });

    /** What reached the upstream carrying this X-Request-Id. */
    const reachedWith = async (requestId: string) => (await upstream.requests()).filter((r) => r.headers["x-request-id"] === requestId);

    it("a chat completion stored with `store: true` is its creator's: others cannot read, change or delete it (issue 19)", async () => {
      const completion = await client("alice").chat.completions.create({ model: "demo-small", store: true, messages: [{ role: "user", content: "keep me" }] });
      const tag = randomUUID();
      // The demo upstream keeps no chat completions: it echoes what reached it.
      const own = await rawRequest(gateway!.url, "GET", `/v1/chat/completions/${completion.id}`, TOKENS.alice, { "x-demo-echo": "1" });
      assert.equal(own.status, 200, own.body);
      const refusedTags: string[] = [];
      for (const [method, path, status] of [
        ["GET", `/v1/chat/completions/${completion.id}`, 404],
        ["GET", `/v1/chat/completions/${completion.id}/messages`, 404],
        // Store-backed: a denied change looks like a missing resource too (Llama Stack's 404).
        ["POST", `/v1/chat/completions/${completion.id}`, 404],
        ["DELETE", `/v1/chat/completions/${completion.id}`, 404],
      ] as const) {
        const id = `${tag}-${refusedTags.length}`;
        refusedTags.push(id);
        const res = await rawRequest(gateway!.url, method, path, TOKENS.bob, { "x-request-id": id, "x-demo-echo": "1" });
        assert.equal(res.status, status, `${method} ${path}: ${res.body}`);
      }
      for (const id of refusedTags) assert.deepEqual(await reachedWith(id), [], `request ${id} reached the upstream`);
    });


    it("path tricks cannot skip a route rule, and none of them reaches the upstream", async () => {
      const allowed = randomUUID();
      const ok = await rawRequest(gateway!.url, "GET", "/api/version", TOKENS.admin, { "x-request-id": allowed, "x-demo-echo": "1" });
      assert.equal(ok.status, 200, ok.body);
      // The tag is what the upstream records: the check below can see a request that got through.
      assert.equal((await reachedWith(allowed)).length, 1);
      const tricks = ["/api/version", "/api//version", "/api/./version", "/v1/x/../../api/version", "/v1/%2e%2e/api/version", "/api/x/%2E%2E/version", "/api/version/", "/API/Version", "/%61pi/version"];
      const sent: string[] = [];
      for (const path of tricks) {
        const id = randomUUID();
        sent.push(id);
        const { status, body } = await rawRequest(gateway!.url, "GET", path, TOKENS.bob, { "x-request-id": id, "x-demo-echo": "1" });
        assert.equal(status, 403, `${path}: ${body}`);
      }
      // `;` (Tomcat's and Spring's path parameters: `..;/` walks up there) and an encoded slash are refused outright.
      for (const path of ["/v1/models/..;/../api/version", "/api;x=1/version", "/api/version%3B", "/v1/models/x%3B/../../../api/version", "/api%2Fversion"]) {
        const id = randomUUID();
        sent.push(id);
        const { status, body } = await rawRequest(gateway!.url, "GET", path, TOKENS.bob, { "x-request-id": id });
        assert.equal(status, 400, `${path}: ${body}`);
      }
      for (const id of sent) assert.deepEqual(await reachedWith(id), [], `request ${id} reached the upstream`);
    });

    it("path tricks cannot skip a resource check either, whatever the method", async () => {
      const id = await upload("alice", "private");
      for (const path of [`/v1/files/${id}`, `/V1/Files/${id}`, `/v1//files/./${id}/`, `/v1/x/../files/${id}/content`, `/v1/%66iles/${id}`]) {
        const { status, body } = await rawRequest(gateway!.url, "GET", path, TOKENS.bob);
        assert.equal(status, 404, `${path}: ${body}`);
      }
      const sent: string[] = [];
      const refused = async (method: string, path: string, expected: number) => {
        const tag = randomUUID();
        sent.push(tag);
        const { status, body } = await rawRequest(gateway!.url, method, path, TOKENS.bob, { "x-request-id": tag });
        assert.equal(status, expected, `${method} ${path}: ${body}`);
      };
      // A file is store-backed: any denied action looks like a missing file (Llama Stack's 404).
      await refused("DELETE", `/V1/FILES/${id}`, 404);
      // PUT and PATCH are updates of the owner's file: refused, not forwarded (issue 14).
      await refused("PUT", `/v1/files/${id}`, 404);
      await refused("PATCH", `/v1/files/${id}`, 404);
      await refused("POST", `/v1/files/${id}/content`, 404);
      // An id with `;`, raw or encoded, is a 400 before any other stage.
      await refused("GET", `/v1/files/${id};x=1`, 400);
      await refused("GET", `/v1/files/${id}%3B`, 400);
      await refused("DELETE", `/V1/FILES/${id};v`, 400);
      for (const tag of sent) assert.deepEqual(await reachedWith(tag), [], `request ${tag} reached the upstream`);
      assert.equal((await client("alice").files.retrieve(id)).id, id);
    });

    it("a required scope is enforced with the reference's message", async () => {
      const denied = await rawRequest(gateway!.url, "GET", "/api/status", TOKENS.alice);
      assert.equal(denied.status, 403);
      assert.equal(JSON.parse(denied.body).error.message, "Access denied: user does not have required scope: scoped:use");
      assert.equal((await rawRequest(gateway!.url, "GET", "/API/Status/", TOKENS.alice)).status, 403);
      assert.equal((await rawRequest(gateway!.url, "GET", "/api/status", TOKENS.admin, { "x-demo-echo": "1" })).status, 200);
    });

    it("every decision is an audit log line without secrets", async () => {
      await assert.rejects(client("bob").models.retrieve("demo-embed"));
      const line = await gateway!.waitForLog((l) => l.msg === "access decision" && l.principal === "bob" && l.resource === "model::demo-embed");
      assert.equal(line.decision, "deny");
      assert.equal(line.action, "read");
      assert.equal(line.rule, 0);
      for (const token of Object.values(TOKENS)) assert.deepEqual(linesContaining(gateway!.stdout() + gateway!.stderr(), token), []);
    });
  });
}

suite("sqlite");
suite("postgres");
