import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { linesContaining, startGateway } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// `tollgate serve` without a config file: Tollgate's own API keys in
// ./data/tollgate.db, an admin key printed once on first start.

const KEY = /tg_[A-Za-z0-9_-]{43}/g;

describe("tollgate serve with the embedded default config", { timeout: 150_000 }, () => {
  let upstream: UpstreamProcess;
  let cwd: string;

  before(async () => {
    upstream = await startUpstreamProcess();
    cwd = mkdtempSync(join(tmpdir(), "tollgate-serve-"));
  });

  after(async () => {
    await upstream?.close();
    rmSync(cwd, { recursive: true, force: true });
  });

  let adminKey: string;

  test("the first start prints an admin key once, with a curl example against the listening URL", { timeout: 45_000 }, async () => {
    const gateway = await startGateway({ cwd, env: { TOLLGATE_UPSTREAM: upstream.url } });
    try {
      const keys = gateway.stderr().match(KEY) ?? [];
      // The key itself and the curl line: the same key, twice, in one banner.
      assert.equal(new Set(keys).size, 1, gateway.stderr());
      adminKey = keys[0]!;
      assert.ok(gateway.stderr().includes(`curl -H "Authorization: Bearer ${adminKey}" ${gateway.url}/v1/models`));
      // Only the banner shows it: no log line does.
      assert.deepEqual(linesContaining(gateway.stdout(), adminKey), []);

      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${adminKey}` } });
      assert.equal(res.status, 200);
      const models = (await res.json()) as { data: { id: string }[] };
      assert.deepEqual(models.data.map((m) => m.id), ["demo-small", "demo-embed"]);

      const line = await gateway.waitForLog((l) => l.msg === "request" && l.path === "/v1/models");
      assert.equal(line.principal, "admin");
      assert.equal(await gateway.stop(), 0);
    } finally {
      await gateway.close();
    }
  });

  test("the second start prints no key, and the first key still works", { timeout: 45_000 }, async () => {
    assert.ok(adminKey, "depends on the previous test");
    const gateway = await startGateway({ cwd, env: { TOLLGATE_UPSTREAM: upstream.url } });
    try {
      assert.deepEqual(gateway.stderr().match(KEY), null);
      const ok = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${adminKey}` } });
      assert.equal(ok.status, 200);
      const refused = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer tg_not-a-real-key" } });
      assert.equal(refused.status, 401);
      // No file to re-read: SIGHUP is refused as such (never a "reloaded" that changed nothing), and serving goes on.
      gateway.child.kill("SIGHUP");
      const line = await gateway.waitForLog((l) => /^configuration reload/.test(String(l.msg)));
      assert.equal(line.msg, "configuration reload refused; the previous configuration stays in force");
      assert.match(String(line.err), /embedded default config/);
      assert.equal((await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${adminKey}` } })).status, 200);
      assert.equal(await gateway.stop(), 0);
      assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), adminKey), []);
    } finally {
      await gateway.close();
    }
  });
});

describe("tollgate serve --demo", { timeout: 150_000 }, () => {
  test("runs the tour on a machine with nothing else: a key, models, a streamed chat", { timeout: 45_000 }, async () => {
    const gateway = await startGateway({ args: ["--demo"], env: { TOLLGATE_UPSTREAM: "http://127.0.0.1:9/" } });
    try {
      const key = (gateway.stderr().match(KEY) ?? [])[0];
      assert.ok(key, gateway.stderr());
      const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: key, maxRetries: 0, timeout: 10_000 });
      const ids: string[] = [];
      for await (const model of client.models.list()) ids.push(model.id);
      assert.deepEqual(ids, ["demo-small", "demo-embed"]);
      const stream = await client.chat.completions.create({
        model: "demo-small",
        stream: true,
        messages: [{ role: "user", content: "hello tollgate" }],
      });
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
      assert.equal(text, "You said: hello tollgate");
      const denied = await fetch(`${gateway.url}/v1/models`);
      assert.equal(denied.status, 401);
      assert.equal(await gateway.stop(), 0);
    } finally {
      await gateway.close();
    }
  });
});
