import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { gzipSync } from "node:zlib";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { distFile, linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { requireService } from "../support/services.js";

// Error messages that carry a secret never reach a log line or a response:
// an upstream error repeating the credential the gateway sent it, an
// identity endpoint whose error repeats the client's token, a PostgreSQL
// URL with a password the server refuses.

const TOKEN = "tok-secrets-Hq73nB0x";
const UPSTREAM_KEY = "sk-upstream-shared-Vb82kLq0";

/**
 * An OpenAI-compatible server that does what many do on a bad key: repeats
 * the Authorization it got in its 401 answer. `x-leak` says how: `plain`
 * (JSON with Content-Length), `gzip` (compressed), `split` (chunked, the key
 * cut across two chunks), `unknown` (a content coding nobody can read),
 * `slow` (40 bytes, then nothing for 10 s). `cut` counts the answers
 * whose client went away before their end.
 */
function startLeakyUpstream(): Promise<{ url: string; cut(): number; close(): Promise<void> }> {
  let cut = 0;
  const server = http.createServer((req, res) => {
    res.once("close", () => {
      if (!res.writableFinished) cut++;
    });
    req.resume();
    const auth = req.headers.authorization ?? "";
    const text = JSON.stringify({ error: { message: `Incorrect API key provided: ${auth}`, type: "invalid_request_error", code: "invalid_api_key" } });
    const how = req.headers["x-leak"];
    const headers = { "content-type": "application/json", "x-upstream-debug": `got ${auth}` };
    if (how === "gzip") {
      const body = gzipSync(text);
      res.writeHead(401, { ...headers, "content-encoding": "gzip", "content-length": body.length }).end(body);
    } else if (how === "split") {
      res.writeHead(401, headers);
      const cut = text.indexOf(UPSTREAM_KEY) + 5;
      res.write(text.slice(0, cut));
      setTimeout(() => res.end(text.slice(cut)), 20);
    } else if (how === "slow") {
      res.writeHead(401, headers);
      // Longer than the key: the mask holds back only the key's length, the rest reaches the client now.
      res.write(text.slice(0, 40));
      setTimeout(() => res.end(text.slice(40)), 10_000).unref();
    } else if (how === "unknown") {
      res.writeHead(401, { ...headers, "content-encoding": "x-secret-codec" }).end(text);
    } else {
      res.writeHead(401, { ...headers, "content-length": Buffer.byteLength(text) }).end(text);
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        cut: () => cut,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      }),
    );
  });
}

describe("secrets in error messages", { timeout: 120_000 }, () => {
  let upstream: Awaited<ReturnType<typeof startLeakyUpstream>>;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;

  before(async () => {
    upstream = await startLeakyUpstream();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "carol" } } });
    gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "custom", endpoint: auth.url } } },
        upstream: { url: upstream.url, api_key: UPSTREAM_KEY },
        logging: { level: "debug" },
      },
    });
  });

  after(async () => {
    await gateway?.close();
    await auth?.close();
    await upstream?.close();
  });

  async function chat(leak: string, signal?: AbortSignal): Promise<Response> {
    return fetch(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      signal,
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json", "x-leak": leak, "accept-encoding": "gzip" },
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] }),
    });
  }

  for (const leak of ["plain", "gzip", "split"]) {
    test(`an upstream error repeating the gateway's upstream key (${leak}) reaches the client with the key masked`, async () => {
      const res = await chat(leak);
      const text = await res.text();
      assert.equal(res.status, 401);
      assert.ok(!text.includes(UPSTREAM_KEY), `the client read the upstream key: ${text}`);
      assert.ok(![...res.headers.values()].some((v) => v.includes(UPSTREAM_KEY)), "a response header carries the upstream key");
      // Still the upstream's answer, readable by the client, the key's place shown.
      const body = JSON.parse(text) as { error: { message: string; code: string } };
      assert.equal(body.error.message, `Incorrect API key provided: Bearer ${"*".repeat(UPSTREAM_KEY.length)}`);
      assert.equal(body.error.code, "invalid_api_key");
      assert.equal(res.headers.get("x-upstream-debug"), `got Bearer ${"*".repeat(UPSTREAM_KEY.length)}`);
    });
  }

  test("an upstream error in a content coding the gateway cannot read is not relayed: 502", async () => {
    const res = await chat("unknown");
    const text = await res.text();
    assert.equal(res.status, 502);
    assert.equal((JSON.parse(text) as { error: { code: string } }).error.code, "bad_gateway");
    assert.ok(!text.includes(UPSTREAM_KEY));
    // The unread answer was dropped without taking the process with it.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal((await fetch(`${gateway.url}/health`)).status, 200);
  });

  test("a client that goes away during a masked error answer aborts the upstream request, and the gateway stays up", async () => {
    const controller = new AbortController();
    const before = upstream.cut();
    const res = await chat("slow", controller.signal);
    assert.equal(res.status, 401);
    const reader = res.body!.getReader();
    await reader.read();
    controller.abort();
    const deadline = Date.now() + 5000;
    while (upstream.cut() === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(upstream.cut(), before + 1, "the upstream answer was not cut");
    assert.equal((await fetch(`${gateway.url}/health`)).status, 200);
  });

  test("an identity endpoint failing with the client's token in its error: 503, and the token is nowhere", async () => {
    auth.setBehaviour({ status: 500, body: { detail: `cannot validate ${TOKEN}: backend down` } });
    try {
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${TOKEN}` } });
      const text = await res.text();
      assert.equal(res.status, 503);
      assert.ok(!text.includes(TOKEN), text);
      await gateway.waitForLog((l) => l.msg === "custom auth endpoint failed" && l.status === 500);
    } finally {
      auth.setBehaviour({ status: undefined, body: undefined });
    }
  });

  test("an identity endpoint answering 200 with an invalid body holding the token: refused, and the token is nowhere", async () => {
    auth.setBehaviour({ status: 200, body: { principal: 42, echo: TOKEN } });
    try {
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${TOKEN}` } });
      const text = await res.text();
      assert.ok(res.status >= 400, `status ${res.status}`);
      assert.ok(!text.includes(TOKEN), text);
      await gateway.waitForLog((l) => /invalid body/.test(String(l.msg)));
    } finally {
      auth.setBehaviour({ status: undefined, body: undefined });
    }
  });

  test("no log line of the gateway holds the client's token or the upstream key", () => {
    const output = gateway.stdout() + gateway.stderr();
    // The requests above were logged (a careless line would be among these).
    assert.ok(gateway.logLines().filter((l) => l.msg === "request").length >= 6);
    assert.deepEqual(linesContaining(output, TOKEN), []);
    assert.deepEqual(linesContaining(output, UPSTREAM_KEY), []);
  });
});

describe("a PostgreSQL password in storage.url", { timeout: 60_000 }, () => {
  const PASSWORD = "pg-Pass-7hQ2xZ";
  let dir: string;
  let storageUrl: string | undefined;

  before(async (t) => {
    const url = await requireService(t as unknown as TestContext, "postgres");
    if (!url) return;
    dir = mkdtempSync(join(tmpdir(), "tollgate-secrets-"));
    // A role that does not exist: the server refuses the connection whatever the password.
    const refused = new URL(url);
    refused.username = `tollgate_nobody_${process.pid}`;
    refused.password = PASSWORD;
    storageUrl = refused.toString();
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function writeConfig(): string {
    const file = join(dir, "tollgate.yaml");
    const config = { server: { auth: { provider_config: { type: "api_key" } } }, storage: { type: "postgres", url: storageUrl } };
    writeFileSync(file, JSON.stringify(config));
    return file;
  }

  test("`keys list` against a server refusing the login fails with a reason, never the password", (t) => {
    if (!storageUrl) return t.skip("postgres not reachable");
    const run = spawnSync(process.execPath, [distFile("cli/main.js"), "keys", "list", "--config", writeConfig()], { encoding: "utf8", timeout: 20_000 });
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, /nobody/); // the driver's reason, naming the role
    assert.deepEqual(linesContaining(run.stdout + run.stderr, PASSWORD), []);
  });

  test("`serve` against a server refusing the login: no output, /ready body or answer holds the password", async (t) => {
    if (!storageUrl) return t.skip("postgres not reachable");
    let gateway: GatewayProcess | undefined;
    try {
      gateway = await startGateway({ config: { server: { auth: { provider_config: { type: "api_key" } } }, storage: { type: "postgres", url: storageUrl } }, readyTimeoutMs: 15_000 });
    } catch (err) {
      // Refused at start-up: the error carries the process's whole output.
      const output = String((err as Error).message);
      assert.match(output, /nobody|storage/);
      assert.deepEqual(linesContaining(output, PASSWORD), []);
      return;
    }
    try {
      // Started unready: what it tells clients must not hold the password either.
      const ready = await fetch(`${gateway.url}/ready`);
      const answer = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer tg_0000000000000000000000000000000000000000" } });
      const texts = [await ready.text(), await answer.text()];
      assert.equal(ready.status, 503);
      for (const text of texts) assert.ok(!text.includes(PASSWORD), text);
      assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), PASSWORD), []);
    } finally {
      await gateway.close();
    }
  });
});
