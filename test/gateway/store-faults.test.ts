import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { createApiKey } from "../../src/core/keys.js";
import { openPostgresRecordStore } from "../../src/core/stores/postgres.js";
import { eventually } from "../support/eventually.js";
import { canMakeDiskFaults, makeImmutable } from "../support/faulty-disk.js";
import { assertForwarded, assertNotForwarded, newTag, requestLog } from "../support/forwarded.js";
import { distFile, startGateway, type GatewayProcess } from "../support/gateway.js";
import { scopedPostgres, type ScopedPostgres } from "../support/postgres.js";
import { POSTGRES_URL, requireService } from "../support/services.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * Faults in the record store, end to end: a real gateway process, a real
 * upstream, PostgreSQL behind a TCP proxy the test pauses and cuts, SQLite
 * files made immutable. A fault never widens access (nothing is created
 * upstream that could not be owned; what was created stays hidden from other
 * tenants), never becomes a 500 or a long wait, and never ends the process.
 */

let upstream: UpstreamProcess;

before(async () => {
  upstream = await startUpstreamProcess();
});
after(async () => {
  await upstream?.close();
});

const trusted = ["127.0.0.1/32", "::1/128"];
const headerAuth = { type: "upstream_header", principal_header: "x-user", trusted_proxies: trusted };

function as(user: string, extra: Record<string, string> = {}): Record<string, string> {
  return { "x-user": user, ...extra };
}

async function upload(gateway: GatewayProcess, user: string, headers: Record<string, string> = {}) {
  const form = new FormData();
  form.set("purpose", "assistants");
  form.set("file", new Blob(["private to " + user]), "notes.txt");
  // Encoded up front, sent with its length: a refusal made before the body is read cannot race its upload.
  const encoded = new Response(form);
  const body = Buffer.from(await encoded.arrayBuffer());
  const started = Date.now();
  const res = await fetch(`${gateway.url}/v1/files`, {
    method: "POST",
    headers: as(user, { ...headers, "content-type": encoded.headers.get("content-type")! }),
    body,
  });
  const answer = (await res.json()) as { id?: string; error?: { code: string; message: string; type: string } };
  return { status: res.status, body: answer, retryAfter: res.headers.get("retry-after"), ms: Date.now() - started };
}

async function call(gateway: GatewayProcess, user: string, method: string, path: string, headers: Record<string, string> = {}) {
  const started = Date.now();
  const res = await fetch(`${gateway.url}${path}`, { method, headers: as(user, headers) });
  const text = await res.text();
  let body: { data?: { id: string }[]; error?: { code: string } } = {};
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    // not JSON
  }
  return { status: res.status, body, ms: Date.now() - started };
}

/** The files the upstream holds, asked directly (not through the gateway). */
async function upstreamFiles(): Promise<{ id: string; content?: string; filename?: string }[]> {
  const res = await fetch(`${upstream.url}/v1/files?limit=100`);
  return ((await res.json()) as { data: { id: string }[] }).data;
}

/** What another tenant can do with `path`: list, get and delete must all fail to show or touch it. */
async function assertHiddenFrom(gateway: GatewayProcess, user: string, collection: string, id: string): Promise<void> {
  const list = await call(gateway, user, "GET", `${collection}?limit=100`);
  assert.equal(list.status, 200);
  assert.ok(!list.body.data!.some((item) => item.id === id), `${user} sees ${id} in the list`);
  const { tag, headers } = newTag();
  assert.equal((await call(gateway, user, "GET", `${collection}/${id}`, headers)).status, 404);
  const removed = await call(gateway, user, "DELETE", `${collection}/${id}`, headers);
  assert.ok(removed.status === 403 || removed.status === 404, `${user} DELETE answered ${removed.status}`);
  await assertNotForwarded(upstream, tag);
}

describe("PostgreSQL record store behind a proxy", () => {
  let scoped: ScopedPostgres | undefined;
  let proxy: TcpProxy;
  let gateway: GatewayProcess;

  before(async () => {
    // A hook cannot skip: each test below skips when this left `scoped` unset (under CI=true this throws instead).
    const url = await requireService({ skip: () => {} } as unknown as TestContext, "postgres");
    if (!url) return;
    scoped = await scopedPostgres(url, "storefaults");
    const target = new URL(url);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    gateway = await startGateway({
      config: { server: { auth: { provider_config: headerAuth } }, storage: { type: "postgres", url: proxy.via(scoped.url) }, upstream: { url: upstream.url } },
    });
  });
  after(async () => {
    await gateway?.close();
    await proxy?.close();
    await scoped?.drop();
  });

  async function ownerRow(id: string): Promise<string | undefined> {
    const { rows } = await scoped!.admin.query(`SELECT principal FROM "${scoped!.schema}".tollgate_owners WHERE id = $1`, [id]);
    return (rows[0] as { principal?: string } | undefined)?.principal;
  }

  test("a file upload while the record store is down is refused with 503 store_unavailable and never reaches the upstream", async (t) => {
    if (!scoped) return t.skip("PostgreSQL is not reachable");
    const before = (await upstreamFiles()).length;
    const { tag, headers } = newTag();
    proxy.cut();
    try {
      const res = await upload(gateway, "alice", headers);
      assert.equal(res.status, 503);
      assert.deepEqual({ code: res.body.error?.code, type: res.body.error?.type }, { code: "store_unavailable", type: "service_unavailable" });
      assert.equal(res.retryAfter, "1");
      assert.ok(res.ms < 3000, `took ${res.ms} ms`);
    } finally {
      proxy.resume();
    }
    await assertNotForwarded(upstream, tag);
    assert.equal((await upstreamFiles()).length, before, "a file was created upstream");
    assert.equal(gateway.child.exitCode, null);
  });

  test("an owner write that fails after the upstream created the file: 503 saying so, and the file stays hidden from other tenants", async (t) => {
    if (!scoped) return t.skip("PostgreSQL is not reachable");
    const known = new Set((await upstreamFiles()).map((f) => f.id));
    // The upstream holds its answer 1.5 s; the store goes away meanwhile, after the create was let through.
    const { tag, headers } = newTag();
    const answer = upload(gateway, "alice", { ...headers, "x-demo-delay-ms": "1500" });
    await new Promise((r) => setTimeout(r, 600));
    proxy.cut();
    let res: Awaited<typeof answer>;
    try {
      res = await answer;
    } finally {
      proxy.resume();
    }
    assert.equal(res.status, 503);
    assert.equal(res.body.error?.code, "store_unavailable");
    assert.match(res.body.error!.message, /was created but its owner could not be recorded/);
    assert.equal(res.body.id, undefined);
    const created = (await upstreamFiles()).find((f) => !known.has(f.id));
    assert.ok(created, "the upstream created the file");
    await assertForwarded(upstream, tag);
    // Held pending by the gateway, then written once the store answers again.
    await eventually(() => ownerRow(created.id), (principal) => principal === "alice", { timeoutMs: 10_000 });
    await assertHiddenFrom(gateway, "bob", "/v1/files", created.id);
    assert.equal((await call(gateway, "alice", "GET", `/v1/files/${created.id}`)).status, 200);
  });

  test("a streamed create whose owner cannot be recorded is cut before the event that names it", async (t) => {
    if (!scoped) return t.skip("PostgreSQL is not reachable");
    const answer = fetch(`${gateway.url}/v1/responses`, {
      method: "POST",
      headers: as("alice", { "content-type": "application/json", "x-demo-delay-ms": "1500" }),
      body: JSON.stringify({ model: "demo-model", input: "hello", stream: true }),
    });
    await new Promise((r) => setTimeout(r, 600));
    proxy.cut();
    let text = "";
    try {
      const res = await answer;
      text = await res.text().catch(() => "");
    } catch {
      // cut before the headers: nothing seen at all
    } finally {
      proxy.resume();
    }
    assert.doesNotMatch(text, /resp_/, "the client saw the id of a resource whose owner is not recorded");
    const created = (await upstream.requests()).filter((r) => r.method === "POST" && r.path === "/v1/responses").at(-1);
    assert.ok(created, "the create reached the upstream");
    const ids = await eventually(
      async () => (await scoped!.admin.query(`SELECT id, principal FROM "${scoped!.schema}".tollgate_owners WHERE type = 'response'`)).rows as { id: string; principal: string }[],
      (rows) => rows.length > 0,
      { timeoutMs: 10_000 },
    );
    const id = ids.at(-1)!.id;
    assert.equal(ids.at(-1)!.principal, "alice");
    assert.equal((await call(gateway, "bob", "GET", `/v1/responses/${id}`)).status, 404);
    assert.equal((await call(gateway, "alice", "GET", `/v1/responses/${id}`)).status, 200);
  });

  test("a stalled record store answers 503 store_unavailable within ~2 s on lookups, lists and creates, never 500", async (t) => {
    if (!scoped) return t.skip("PostgreSQL is not reachable");
    const { tag, headers } = newTag();
    proxy.pause();
    let results: { status: number; code?: string; ms: number }[];
    try {
      results = await Promise.all([
        call(gateway, "alice", "GET", "/v1/files/file-000001", headers).then((r) => ({ status: r.status, code: r.body.error?.code, ms: r.ms })),
        // A list is fetched before it is filtered by the store: it reaches the upstream, its answer never the client.
        call(gateway, "alice", "GET", "/v1/files").then((r) => ({ status: r.status, code: r.body.error?.code, ms: r.ms })),
        call(gateway, "alice", "DELETE", "/v1/vector_stores/vs_000001", headers).then((r) => ({ status: r.status, code: r.body.error?.code, ms: r.ms })),
        upload(gateway, "alice", headers).then((r) => ({ status: r.status, code: r.body.error?.code, ms: r.ms })),
      ]);
    } finally {
      proxy.resume();
    }
    for (const r of results) {
      assert.deepEqual({ status: r.status, code: r.code }, { status: 503, code: "store_unavailable" });
      assert.ok(r.ms < 3500, `took ${r.ms} ms`);
    }
    await assertNotForwarded(upstream, tag);
    assert.equal((await call(gateway, "alice", "GET", "/v1/files")).status, 200);
  });
});

test("API key lookups with the record store down answer 503 store_unavailable within ~2 s", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const scoped = await scopedPostgres(url, "keyfaults");
  const target = new URL(url);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  const direct = await openPostgresRecordStore(scoped.url);
  const { key } = await createApiKey(direct, { principal: "alice" });
  await direct.close();
  const gateway = await startGateway({
    config: { server: { auth: { provider_config: { type: "api_key", cache_ttl_ms: 0 } } }, storage: { type: "postgres", url: proxy.via(scoped.url) }, upstream: { url: upstream.url } },
  });
  try {
    const headers = { authorization: `Bearer ${key}` };
    const passed = newTag();
    assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, ...passed.headers } })).status, 200);
    await assertForwarded(upstream, passed.tag);
    proxy.pause();
    const started = Date.now();
    const refused = newTag();
    const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, ...refused.headers } });
    const body = (await res.json()) as { error: { code: string } };
    proxy.resume();
    assert.deepEqual({ status: res.status, code: body.error.code }, { status: 503, code: "store_unavailable" });
    assert.ok(Date.now() - started < 3500);
    await assertNotForwarded(upstream, refused.tag);
  } finally {
    await gateway.close();
    await proxy.close();
    await scoped.drop();
  }
});

test("tollgate serve with PostgreSQL unreachable exits at once with one line naming storage.url, without its password", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  const target = new URL(url);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  proxy.cut();
  const dir = mkdtempSync(join(tmpdir(), "tollgate-pgdown-"));
  const storage = new URL(proxy.via(POSTGRES_URL));
  storage.username = "tollgate";
  storage.password = "pg-s3cret";
  const config = join(dir, "tollgate.yaml");
  writeFileSync(config, JSON.stringify({ server: { auth: { provider_config: headerAuth } }, storage: { type: "postgres", url: storage.toString() }, upstream: { url: upstream.url } }));
  try {
    const child = spawn(process.execPath, [distFile("cli/main.js"), "serve", "--config", config, "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (c: Buffer) => (output += c.toString()));
    child.stderr.on("data", (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const [code] = (await once(child, "exit")) as [number | null];
    clearTimeout(timer);
    assert.notEqual(code, 0);
    assert.notEqual(code, null, "killed after 15 s: it did not give up");
    assert.match(output, /storage\.url: cannot use PostgreSQL at postgres:\/\/tollgate:\*\*\*@127\.0\.0\.1:\d+\//);
    assert.doesNotMatch(output, /pg-s3cret/);
  } finally {
    await proxy.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a SQLite record store made immutable under a running gateway: 503 store_unavailable, /ready 503, the process lives on", async (t) => {
  if (!canMakeDiskFaults(t, "chattr")) return;
  const dataDir = mkdtempSync(join(tmpdir(), "tollgate-sqlite-faults-"));
  const gateway = await startGateway({
    config: { server: { auth: { provider_config: headerAuth } }, storage: { type: "sqlite", db_path: join(dataDir, "tollgate.db") }, upstream: { url: upstream.url } },
  });
  let undo: (() => void) | undefined;
  try {
    const first = await upload(gateway, "alice");
    assert.equal(first.status, 200);
    assert.equal((await fetch(`${gateway.url}/ready`)).status, 200);
    undo = makeImmutable(dataDir);
    // A successful write probe lets creates through for 1 s (per worker): past it, every create probes again.
    await new Promise((r) => setTimeout(r, 1100));
    // /ready's write probe fails (SELECT 1 did not).
    const ready = await fetch(`${gateway.url}/ready`);
    assert.equal(ready.status, 503);
    assert.ok(((await ready.json()) as { failing: string[] }).failing.includes("record_store"));
    const { tag, headers } = newTag();
    const refused = await upload(gateway, "alice", headers).catch((err) => {
      throw new Error(`${String(err)} exit=${gateway.child.exitCode} signal=${gateway.child.signalCode}\n${gateway.stderr()}\n${gateway.stdout().slice(-3000)}`);
    });
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error?.code, "store_unavailable");
    await assertNotForwarded(upstream, tag);
    // Before: the gateway died of SIGBUS on its next write, with no log line.
    assert.equal(gateway.child.signalCode, null, "the gateway died");
    undo();
    undo = undefined;
    assert.equal((await fetch(`${gateway.url}/ready`)).status, 200);
    assert.equal((await upload(gateway, "alice")).status, 200);
    assert.equal(gateway.child.exitCode, null);
  } finally {
    undo?.();
    await gateway.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

describe("upstream answers that would leave a resource unowned (issue 19)", () => {
  let fake: Server;
  let fakeUrl: string;
  let gateway: GatewayProcess;
  const seen = requestLog();

  before(async () => {
    // A misbehaving OpenAI-compatible server, speaking the real wire format.
    fake = createServer((req, res) => {
      seen.record(req);
      req.resume();
      req.on("end", () => {
        if (req.method === "POST" && req.url === "/v1/vector_stores") {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ object: "vector_store", name: "no id here" }));
        } else if (req.method === "GET" && req.url?.startsWith("/v1/vector_stores?") || req.url === "/v1/vector_stores") {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ object: "list", stores: [{ id: "vs_other_tenant" }] }));
        } else if (req.method === "POST" && req.url === "/v1/responses") {
          res.writeHead(200, { "content-type": "text/event-stream" });
          // 70 KiB of events that name nothing, then the one with the id.
          for (let i = 0; i < 70; i++) res.write(`event: response.in_progress\ndata: ${JSON.stringify({ type: "response.in_progress", pad: "x".repeat(1000) })}\n\n`);
          res.end(`event: response.created\ndata: ${JSON.stringify({ type: "response.created", response: { id: "resp_late", object: "response" } })}\n\n`);
        } else if (req.method === "GET" && req.url === "/v1/responses/resp_late") {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ id: "resp_late", object: "response" }));
        } else {
          res.writeHead(404, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: { message: "not here", type: "not_found_error", code: "not_found" } }));
        }
      });
    });
    fake.listen(0, "127.0.0.1");
    await once(fake, "listening");
    fakeUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
    gateway = await startGateway({ config: { server: { auth: { provider_config: headerAuth } }, upstream: { url: fakeUrl } } });
  });
  after(async () => {
    await gateway?.close();
    fake?.close();
  });

  test("a create answered without an id is refused with 502, not handed on unowned", async () => {
    const res = await fetch(`${gateway.url}/v1/vector_stores`, { method: "POST", headers: as("alice", { "content-type": "application/json" }), body: "{}" });
    const body = (await res.json()) as { error: { code: string } };
    assert.deepEqual({ status: res.status, code: body.error.code }, { status: 502, code: "bad_gateway" });
  });

  test("a list route answering something that is not a list is refused with 502, never relayed unfiltered", async () => {
    const res = await fetch(`${gateway.url}/v1/vector_stores`, { headers: as("bob") });
    const text = await res.text();
    assert.equal(res.status, 502);
    assert.doesNotMatch(text, /vs_other_tenant/);
  });

  test("an id that arrives after the first 64 KiB of a stream is still recorded: other tenants cannot read it", async () => {
    const alices = newTag();
    const res = await fetch(`${gateway.url}/v1/responses`, {
      method: "POST",
      headers: as("alice", { ...alices.headers, "content-type": "application/json" }),
      body: JSON.stringify({ model: "m", input: "hi", stream: true }),
    });
    const text = await res.text();
    assert.equal(res.status, 200);
    assert.match(text, /resp_late/);
    assert.ok(text.length > 70_000);
    await assertForwarded(seen, alices.tag);
    const bobs = newTag();
    assert.equal((await call(gateway, "bob", "GET", "/v1/responses/resp_late", bobs.headers)).status, 404);
    await assertNotForwarded(seen, bobs.tag);
    assert.equal((await call(gateway, "alice", "GET", "/v1/responses/resp_late")).status, 200);
  });
});
