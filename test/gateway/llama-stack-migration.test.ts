import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import LlamaStackClient, * as Llama from "llama-stack-client";
import { parse } from "yaml";
import { parseConfig } from "../../src/core/config/load.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { assertForwarded, assertNotForwarded, newTag, TAG_HEADER } from "../support/forwarded.js";
import { REPO, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// docs/llama-stack.md's migration: a complete Llama Stack 0.7 run.yaml
// (examples/llama-stack-run.yaml) and the Tollgate config made from it
// (examples/tollgate-from-llama-stack.yaml), which loads and serves.

const RUN_YAML = join(REPO, "examples/llama-stack-run.yaml");
const TOLLGATE_YAML = join(REPO, "examples/tollgate-from-llama-stack.yaml");

const TOKENS = { alice: "tok-alice-Mg8s2Kd4", bob: "tok-bob-Tn3x7Vb1" } as const;

describe("migrating from a Llama Stack 0.7 run.yaml", { timeout: 120_000 }, () => {
  test("the Tollgate config holds the run.yaml's server and storage sections unchanged", () => {
    const run = parse(readFileSync(RUN_YAML, "utf8")) as Record<string, unknown>;
    const tollgate = parse(readFileSync(TOLLGATE_YAML, "utf8")) as Record<string, unknown>;
    assert.deepEqual(tollgate.server, run.server);
    assert.deepEqual(tollgate.storage, run.storage);
    assert.deepEqual(Object.keys(tollgate).sort(), ["server", "storage", "upstream"]);
  });

  test("the Tollgate config loads: the quota and record stores are the run.yaml's kv_default", () => {
    const config = parseConfig(readFileSync(TOLLGATE_YAML, "utf8"), TOLLGATE_YAML, { SQLITE_STORE_DIR: "/srv/llama" });
    assert.deepEqual(config.storage, { type: "sqlite", db_path: "/srv/llama/kvstore.db" });
    assert.deepEqual(config.server.quota?.kvstore, { type: "sqlite", db_path: "/srv/llama/kvstore.db", namespace: "quota" });
    assert.equal(config.server.auth?.access_policy.length, 5);
    assert.equal(config.server.auth?.route_policy.length, 2);
  });

  describe("the gateway serving with it", () => {
    let upstream: UpstreamProcess;
    let auth: CustomAuthServer;
    let gateway: GatewayProcess;
    let dir: string;
    const client = (who: keyof typeof TOKENS, tag: string = newTag().tag) =>
      new LlamaStackClient({ baseURL: gateway.url, apiKey: TOKENS[who], maxRetries: 0, timeout: 10_000, defaultHeaders: { [TAG_HEADER]: tag } });

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "tollgate-migration-"));
      upstream = await startUpstreamProcess();
      auth = await startCustomAuth({
        users: {
          [TOKENS.alice]: { principal: "alice", attributes: { roles: ["user"], teams: ["ml"] } },
          [TOKENS.bob]: { principal: "bob", attributes: { roles: ["user"], teams: ["web"] } },
        },
      });
      gateway = await startGateway({
        config: readFileSync(TOLLGATE_YAML, "utf8"),
        env: { SQLITE_STORE_DIR: dir, AUTH_ENDPOINT: auth.url, LLAMA_STACK_URL: upstream.url },
      });
    });

    after(async () => {
      await gateway?.close();
      await auth?.close();
      await upstream?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test("an allowed call is served with the quota applied; a denied one is refused with the reference's message and never forwarded", async () => {
      const file = await client("alice").files.create({ file: await Llama.toFile(Buffer.from("notes"), "notes.txt"), purpose: "assistants" });
      const passed = newTag().tag;
      assert.equal((await client("alice", passed).files.retrieve(file.id)).id, file.id);
      await assertForwarded(upstream, passed);
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${TOKENS.alice}` } });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("ratelimit-policy") ?? "", /1000/);

      const testId = newTag().tag;
      await assert.rejects(client("bob", testId).files.retrieve(file.id), (err: unknown) => {
        assert.ok(err instanceof Llama.NotFoundError, String(err));
        return true;
      });
      await assert.rejects(client("bob", testId).batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" }), (err: unknown) => {
        assert.ok(err instanceof Llama.PermissionDeniedError, String(err));
        assert.equal((err.error as { error: { message: string } }).error.message, "Access denied: insufficient permissions for route /v1/batches");
        return true;
      });
      await assertNotForwarded(upstream, testId);
    });
  });

  describe("server.auth with only a route_policy (no provider)", () => {
    let upstream: UpstreamProcess;
    let gateway: GatewayProcess;
    let dir: string;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "tollgate-route-only-"));
      upstream = await startUpstreamProcess();
      gateway = await startGateway({
        config: {
          server: { auth: { route_policy: [{ permit: { paths: ["/v1/models*", "/v1/chat/completions"] } }] } },
          storage: { backends: { kv_default: { type: "kv_sqlite", db_path: join(dir, "kv.db") } } },
          upstream: { url: upstream.url },
        },
      });
    });

    after(async () => {
      await gateway?.close();
      await upstream?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test("serves every caller anonymously on the routes its rules permit, refuses the others with 403, never forwarded", async () => {
      const passed = newTag();
      const client = new LlamaStackClient({ baseURL: gateway.url, maxRetries: 0, timeout: 10_000, defaultHeaders: passed.headers });
      assert.deepEqual((await client.models.list()).map((m) => m.id), ["demo-small", "demo-embed"]);
      await assertForwarded(upstream, passed.tag);
      const { tag, headers } = newTag();
      const denied = await fetch(`${gateway.url}/v1/embeddings`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ model: "demo-small", input: "hi" }),
      });
      assert.equal(denied.status, 403);
      assert.equal(((await denied.json()) as { error: { message: string } }).error.message, "Access denied: insufficient permissions for route /v1/embeddings");
      await assertNotForwarded(upstream, tag);
    });
  });
});
