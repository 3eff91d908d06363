import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { eventually } from "../support/eventually.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type DemoRequest, type UpstreamProcess } from "../support/upstream.js";

// Several upstreams routed by model (DESIGN.md "Several upstreams, routed by
// model", docs/upstreams.md), end to end: real demo upstream processes, each
// serving its own models, a gateway process in front; which upstream a
// request reached is read from each upstream's own request log (every
// request is tagged with its X-Request-Id).

const KEY_A = "sk-upstream-a-Qw81nZ";
const KEY_C = "sk-upstream-c-Lp27xV";
const KEY_LEAKY = "sk-upstream-leaky-Hj55rT";

const admin = { "x-user": "ada", "x-attrs": JSON.stringify({ roles: ["admin"] }) };
const bob = { "x-user": "bob" };

/** An upstream that repeats the Authorization it got in a 401 answer, as many do on a bad key. */
function startLeakyUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    req.resume();
    const text = JSON.stringify({ error: { message: `Incorrect API key provided: ${req.headers.authorization ?? ""}`, type: "invalid_request_error", code: "invalid_api_key" } });
    res.writeHead(401, { "content-type": "application/json", "content-length": Buffer.byteLength(text) }).end(text);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => new Promise<void>((done) => (server.closeAllConnections(), server.close(() => done()))),
      }),
    ),
  );
}

/** Sends a chat completion naming `model`, tagged; resolves with the status, body and tag. */
async function chat(gateway: GatewayProcess, model: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; tag: string }> {
  const tag = `rt-${randomUUID()}`;
  const res = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-request-id": tag, ...headers },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
  });
  return { status: res.status, body: await res.text(), tag };
}

/** The requests each upstream received carrying `tag`. */
async function seenBy(upstreams: Record<string, UpstreamProcess>, tag: string): Promise<Record<string, DemoRequest[]>> {
  const out: Record<string, DemoRequest[]> = {};
  for (const [name, upstream] of Object.entries(upstreams)) out[name] = (await upstream.requests()).filter((r) => r.headers["x-request-id"] === tag);
  return out;
}

/** The one upstream (by name) that received `tag`; fails when none or several did. */
async function receiver(upstreams: Record<string, UpstreamProcess>, tag: string): Promise<string> {
  const seen = await seenBy(upstreams, tag);
  const names = Object.keys(seen).filter((name) => seen[name]!.length > 0);
  assert.equal(names.length, 1, `expected one upstream to receive ${tag}, got ${JSON.stringify(names)}`);
  return names[0]!;
}

describe("several upstreams, routed by model", { timeout: 120_000 }, () => {
  let a: UpstreamProcess;
  let b: UpstreamProcess;
  let c: UpstreamProcess;
  let leaky: Awaited<ReturnType<typeof startLeakyUpstream>>;
  let gateway: GatewayProcess;
  let open: GatewayProcess;
  let upstreams: Record<string, UpstreamProcess>;

  before(async () => {
    [a, b, c, leaky] = await Promise.all([
      // a and b also speak Ollama's list API (/api/tags, /api/ps); c, like vLLM, answers it 404.
      startUpstreamProcess(["--models", "m-big,guard-1", "--ollama"]),
      startUpstreamProcess(["--models", "m-small,m-other", "--ollama"]),
      startUpstreamProcess(["--models", "m-big"]),
      startLeakyUpstream(),
    ]);
    upstreams = { a, b, c };
    [gateway, open] = await Promise.all([
      startGateway({
        config: {
          server: {
            auth: {
              provider_config: { type: "upstream_header", principal_header: "x-user", attributes_header: "x-attrs", trusted_proxies: ["127.0.0.1"] },
              access_policy: [
                { permit: { actions: ["read"], resource: "model::*" }, when: "user with admin in roles", description: "admins use every model" },
                { permit: { actions: ["read"], resource: "model::gpt-4o" }, description: "never matches: gpt-4o is checked as its target" },
                { permit: { actions: ["read"], resource: "model::m-small" }, description: "everyone uses m-small" },
              ],
            },
          },
          upstreams: [
            { name: "big-1", url: a.url, models: ["m-big", "guard-*"], api_key: KEY_A },
            { name: "big-2", url: c.url, models: ["m-big"], api_key: KEY_C },
            { name: "leaky", url: leaky.url, models: ["leaky-*"], api_key: KEY_LEAKY },
            { name: "rest", url: b.url, models: ["*"] },
          ],
          model_aliases: { "gpt-4o": "m-big" },
        },
      }),
      // Authentication off: nothing checks the model, it still picks the upstream. No "*": a model nobody serves is a 404.
      startGateway({
        config: {
          upstreams: [
            { name: "big", url: a.url, models: ["m-big"] },
            { name: "small", url: b.url, models: ["m-small"] },
          ],
          model_aliases: { small: "m-small" },
        },
      }),
    ]);
  });

  after(async () => {
    await Promise.all([gateway?.close(), open?.close()]);
    await Promise.all([a?.close(), b?.close(), c?.close(), leaky?.close()]);
  });

  test("a model named exactly goes to an upstream listing it; a glob matches; any other model goes to the \"*\" upstream", async () => {
    const big = await chat(gateway, "m-big", admin);
    assert.equal(big.status, 200, big.body);
    assert.ok(["a", "c"].includes(await receiver(upstreams, big.tag)));

    const guard = await chat(gateway, "guard-1", admin);
    assert.equal(guard.status, 200, guard.body);
    assert.equal(await receiver(upstreams, guard.tag), "a", "guard-* is big-1's only");

    const small = await chat(gateway, "m-small", bob);
    assert.equal(small.status, 200, small.body);
    assert.equal(await receiver(upstreams, small.tag), "b", "no upstream names m-small: the \"*\" one");
  });

  test("an alias is checked and forwarded as its target: a rule on the alias never matches, the upstream is sent the served name", async () => {
    const refused = await chat(gateway, "gpt-4o", bob);
    assert.equal(refused.status, 404, "bob may read model::gpt-4o but not m-big: the request is checked as m-big");
    assert.equal((JSON.parse(refused.body) as { error: { code: string } }).error.code, "model_not_found");
    assert.deepEqual(Object.values(await seenBy(upstreams, refused.tag)).flat(), [], "a refused request reaches no upstream");

    const allowed = await chat(gateway, "gpt-4o", admin);
    assert.equal(allowed.status, 200, allowed.body);
    const name = await receiver(upstreams, allowed.tag);
    assert.ok(["a", "c"].includes(name), "gpt-4o is m-big: big-1 or big-2, never the \"*\" upstream");
    const [sent] = (await seenBy(upstreams, allowed.tag))[name]!;
    assert.equal((JSON.parse(sent!.body) as { model: string }).model, "m-big");
  });

  test("an alias in a multipart upload (audio) is checked and forwarded as its target, the rest of the form untouched", async () => {
    const upload = async (who: Record<string, string>, fields: [string, string][]) => {
      const form = new FormData();
      form.append("file", new Blob([Buffer.from([0x52, 0x49, 0x46, 0x46, 0, 13, 10])]), "clip.wav");
      for (const [name, value] of fields) form.append(name, value);
      const tag = `rt-${randomUUID()}`;
      const res = await fetch(`${gateway.url}/v1/audio/transcriptions`, { method: "POST", headers: { "x-request-id": tag, ...who }, body: form });
      return { status: res.status, body: await res.text(), tag };
    };
    const refused = await upload(bob, [["model", "gpt-4o"]]);
    assert.equal(refused.status, 404, "checked as m-big, which bob may not read");
    assert.deepEqual(Object.values(await seenBy(upstreams, refused.tag)).flat(), []);

    const allowed = await upload(admin, [["model", "gpt-4o"], ["language", "fr"]]);
    const name = await receiver(upstreams, allowed.tag);
    assert.ok(["a", "c"].includes(name), `gpt-4o is m-big, served by big-1 or big-2 (${allowed.status} ${allowed.body})`);
    const [sent] = (await seenBy(upstreams, allowed.tag))[name]!;
    const received = await new Response(sent!.body, { headers: { "content-type": String(sent!.headers["content-type"]) } }).formData();
    assert.deepEqual([received.get("model"), received.get("language"), (received.get("file") as File).name], ["m-big", "fr", "clip.wav"]);

    // Named twice: the gateway cannot tell which one the upstream reads; refused, never forwarded.
    const twice = await upload(admin, [["model", "gpt-4o"], ["model", "gpt-4o"]]);
    assert.equal(twice.status, 400, twice.body);
    assert.deepEqual(Object.values(await seenBy(upstreams, twice.tag)).flat(), []);
  });

  test("each upstream is sent its own api_key", async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 6 && seen.size < 2; i++) {
      const { status, tag } = await chat(gateway, "m-big", admin);
      assert.equal(status, 200);
      const name = await receiver(upstreams, tag);
      const [sent] = (await seenBy(upstreams, tag))[name]!;
      assert.equal(sent!.headers.authorization, `Bearer ${name === "a" ? KEY_A : KEY_C}`);
      seen.add(name);
    }
  });

  test("two slow requests for a model two upstreams serve go one to each (fewest in flight)", async () => {
    // Requests in flight are counted per process (docs/upstreams.md): one process here, even in CI's run with
    // --workers 2, where the two requests could meet two workers that each have nothing in flight.
    const single = await startGateway({
      config: { upstreams: [{ name: "big-1", url: a.url, models: ["m-big"] }, { name: "big-2", url: c.url, models: ["m-big"] }] },
      args: ["--workers", "1"],
    });
    try {
      const slow = { "x-demo-delay-ms": "800" };
      const [one, two] = await Promise.all([chat(single, "m-big", slow), chat(single, "m-big", slow)]);
      assert.equal(one.status, 200);
      assert.equal(two.status, 200);
      assert.deepEqual([await receiver(upstreams, one.tag), await receiver(upstreams, two.tag)].sort(), ["a", "c"]);
    } finally {
      await single.close();
    }
  });

  test("an upstream's error answer repeating its api_key reaches the client masked", async () => {
    const res = await chat(gateway, "leaky-1", admin);
    assert.equal(res.status, 401);
    assert.ok(!res.body.includes(KEY_LEAKY), res.body);
    assert.equal((JSON.parse(res.body) as { error: { message: string } }).error.message, `Incorrect API key provided: Bearer ${"*".repeat(KEY_LEAKY.length)}`);
  });

  test("GET /v1/models merges every upstream's list (each model once), filtered by the policy; an alias is listed when its target is readable", async () => {
    const list = async (who: Record<string, string>) => {
      const res = await fetch(`${gateway.url}/v1/models`, { headers: who });
      assert.equal(res.status, 200);
      return ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id);
    };
    assert.deepEqual(await list(admin), ["m-big", "gpt-4o", "guard-1", "m-small", "m-other"]);
    assert.deepEqual(await list(bob), ["m-small"], "bob reads m-small only; gpt-4o is m-big, which he may not read");
  });

  test("Ollama's GET /api/tags and /api/ps merge the lists of the upstreams that speak it (a vLLM's 404 left out), filtered by the policy, aliases listed", async () => {
    for (const path of ["/api/tags", "/api/ps"]) {
      const list = async (who: Record<string, string>) => {
        const res = await fetch(`${gateway.url}${path}`, { headers: who });
        assert.equal(res.status, 200, path);
        return ((await res.json()) as { models: { name: string; model: string }[] }).models;
      };
      const all = await list(admin);
      assert.deepEqual(all.map((m) => m.name), ["m-big", "gpt-4o", "guard-1", "m-small", "m-other"], path);
      assert.deepEqual(all.find((m) => m.name === "gpt-4o")?.model, "gpt-4o", "an alias's entry names the alias twice, as Ollama's do");
      assert.deepEqual((await list(bob)).map((m) => m.name), ["m-small"], path);
      // Without authentication the merge is the same, unfiltered.
      const open_ = await fetch(`${open.url}${path}`);
      assert.deepEqual(((await open_.json()) as { models: { name: string }[] }).models.map((m) => m.name), ["m-big", "guard-1", "m-small", "small", "m-other"], path);
    }
  });

  test("GET /v1/models/{id} asks the upstream serving the model", async () => {
    const res = await fetch(`${gateway.url}/v1/models/guard-1`, { headers: admin });
    assert.equal(res.status, 200, "only big-1 serves guard-1; the \"*\" upstream would answer 404");
    assert.equal(((await res.json()) as { id: string }).id, "guard-1");
  });

  test("without a \"*\" upstream a model nobody serves is a 404 model_not_found, never forwarded; a request without a model is a 404 route_not_found", async () => {
    const nope = await chat(open, "nope");
    assert.equal(nope.status, 404, nope.body);
    assert.equal((JSON.parse(nope.body) as { error: { code: string } }).error.code, "model_not_found");
    assert.deepEqual(Object.values(await seenBy(upstreams, nope.tag)).flat(), []);

    const files = await fetch(`${open.url}/v1/files`);
    assert.equal(files.status, 404);
    assert.equal(((await files.json()) as { error: { code: string } }).error.code, "route_not_found");
  });

  test("with authentication off the model still picks the upstream, and an alias still applies", async () => {
    const small = await chat(open, "small");
    assert.equal(small.status, 200, small.body);
    assert.equal(await receiver(upstreams, small.tag), "b");
    const [sent] = (await seenBy(upstreams, small.tag)).b!;
    assert.equal((JSON.parse(sent!.body) as { model: string }).model, "m-small");

    const big = await chat(open, "m-big");
    assert.equal(big.status, 200, big.body);
    assert.equal(await receiver(upstreams, big.tag), "a");

    // GET /v1/models/{id}: the upstream serving it (the "*"-less gateway has no other way to find it), an alias by its target.
    for (const id of ["m-big", "small"]) {
      const res = await fetch(`${open.url}/v1/models/${id}`);
      assert.equal(res.status, 200, id);
      assert.equal(((await res.json()) as { id: string }).id, id === "small" ? "m-small" : id);
    }
  });
});

describe("failover between upstreams", { timeout: 120_000 }, () => {
  let first: UpstreamProcess;
  let second: UpstreamProcess;
  let gateway: GatewayProcess;

  before(async () => {
    [first, second] = await Promise.all([startUpstreamProcess(["--models", "m"]), startUpstreamProcess(["--models", "m"])]);
    gateway = await startGateway({
      config: {
        upstreams: [
          { name: "first", url: first.url, models: ["m"], connect_timeout_ms: 1000 },
          { name: "second", url: second.url, models: ["m"], connect_timeout_ms: 1000 },
        ],
      },
    });
  });

  after(async () => {
    await gateway?.close();
    await Promise.all([first?.close(), second?.close()]);
  });

  test("an upstream answering 503 is retried once on the other; when both answer 503 the client gets 503", async () => {
    const { status, tag } = await chat(gateway, "m", { "x-demo-status": "503" });
    assert.equal(status, 503);
    const seen = await seenBy({ first, second }, tag);
    assert.equal(seen.first!.length, 1, "tried once on first");
    assert.equal(seen.second!.length, 1, "retried once on second, never more");
  });

  test("an upstream killed mid-test: every request is answered by the other, retried once before the client sees anything", async () => {
    const before = await chat(gateway, "m");
    assert.equal(before.status, 200);
    await first.close();
    for (let i = 0; i < 6; i++) {
      const { status, body, tag } = await chat(gateway, "m");
      assert.equal(status, 200, body);
      assert.equal((await seenBy({ second }, tag)).second!.length, 1);
    }
    await gateway.waitForLog((line) => line.msg === "upstream failed before answering: retried on another" && line.upstream === "first");
  });

  test("both upstreams down: the client gets 502", async () => {
    await second.close();
    const { status, body } = await chat(gateway, "m");
    assert.equal(status, 502, body);
    assert.equal((JSON.parse(body) as { error: { code: string } }).error.code, "bad_gateway");
  });
});

describe("resources remember their upstream", { timeout: 120_000 }, () => {
  let big: UpstreamProcess;
  let rest: UpstreamProcess;
  let gateway: GatewayProcess;

  const auth = { provider_config: { type: "upstream_header", principal_header: "x-user", attributes_header: "x-attrs", trusted_proxies: ["127.0.0.1"] } };
  const config = (upstreams: Record<string, unknown>[]) => ({ server: { auth }, upstreams });

  before(async () => {
    [big, rest] = await Promise.all([startUpstreamProcess(["--models", "m-big"]), startUpstreamProcess(["--models", "m-small"])]);
    gateway = await startGateway({
      config: config([
        { name: "big", url: big.url, models: ["m-big"] },
        { name: "rest", url: rest.url, models: ["*"] },
      ]),
    });
  });

  after(async () => {
    await gateway?.close();
    await Promise.all([big?.close(), rest?.close()]);
  });

  test("Ollama's GET /api/tags when no upstream speaks it (each answers 404): a 404, not a 502", async () => {
    const res = await fetch(`${gateway.url}/api/tags`, { headers: { "x-user": "ada" } });
    assert.equal(res.status, 404);
    const { error } = (await res.json()) as { error: { code: string; message: string } };
    assert.deepEqual([error.code, error.message], ["not_found", "No upstream serves GET /api/tags"]);
  });

  async function reload(upstreams: Record<string, unknown>[]): Promise<void> {
    const seen = gateway.logLines().filter((l) => l.msg === "configuration reloaded").length;
    writeFileSync(join(gateway.dir, "tollgate.yaml"), JSON.stringify(config(upstreams)));
    gateway.child.kill("SIGHUP");
    await eventually(async () => gateway.logLines().filter((l) => l.msg === "configuration reloaded").length, (n) => n > seen);
  }

  test("a response created through the upstream serving its model is read there, also after a reload reorders the upstreams; removed by a reload: 404", async () => {
    const created = await fetch(`${gateway.url}/v1/responses`, {
      method: "POST",
      headers: { ...admin, "content-type": "application/json" },
      body: JSON.stringify({ model: "m-big", input: "hello" }),
    });
    assert.equal(created.status, 200, await created.clone().text());
    const { id } = (await created.json()) as { id: string };
    const read = () => fetch(`${gateway.url}/v1/responses/${id}`, { headers: admin });
    // Without a model, a request goes to the "*" upstream, which never saw this response: only the record sends it to big.
    const first = await read();
    assert.equal(first.status, 200, await first.text());

    await reload([
      { name: "rest", url: rest.url, models: ["*"] },
      { name: "big", url: big.url, models: ["m-big", "m-huge"] },
    ]);
    assert.equal((await read()).status, 200, "still big's after a reload");

    await reload([{ name: "rest", url: rest.url, models: ["*"] }, { name: "other", url: big.url, models: ["m-big"] }]);
    const gone = await read();
    assert.equal(gone.status, 404);
    assert.equal(((await gone.json()) as { error: { code: string } }).error.code, "not_found");
  });

  test("usage rows carry the name of the upstream that answered", async () => {
    for (const model of ["m-big", "m-small"]) {
      const { status } = await chat(gateway, model, admin);
      assert.equal(status, 200);
    }
    const rows = await eventually(
      async () => {
        const res = await fetch(`${gateway.url}/admin/v1/usage?group_by=upstream,model`, { headers: admin });
        return ((await res.json()) as { data: { upstream: string; model: string | null; requests: number }[] }).data;
      },
      (data) => data.some((r) => r.model === "m-small"),
    );
    const byModel = Object.fromEntries(rows.filter((r) => r.model?.startsWith("m-")).map((r) => [r.model, r.upstream]));
    assert.equal(byModel["m-small"], "rest");
    assert.ok(["big", "other"].includes(byModel["m-big"]!), JSON.stringify(rows));
  });

  test("a reload that removes an upstream lets the request it is serving finish; new requests go elsewhere", async () => {
    const slow = chat(gateway, "m-big", { ...admin, "x-demo-delay-ms": "1500" });
    await big.waitForRequest((r) => r.headers["x-demo-delay-ms"] === "1500");
    await reload([{ name: "rest", url: rest.url, models: ["*"] }]);
    const { status, body } = await slow;
    assert.equal(status, 200, body);
    const after = await chat(gateway, "m-big", admin);
    assert.equal(after.status, 200);
    assert.equal((await rest.requests()).filter((r) => r.headers["x-request-id"] === after.tag).length, 1, "m-big now goes to the \"*\" upstream");
  });
});
