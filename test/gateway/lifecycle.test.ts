import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Agent, request } from "undici";
import { distFile, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Start-up, shutdown and signals of `tollgate serve`, as a real process.

const identity = { "x-user": "dora" };

function headerAuthConfig(upstreamUrl: string, server: Record<string, unknown> = {}) {
  return {
    server: { auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } }, ...server },
    upstream: { url: upstreamUrl },
  };
}

function chatStream(url: string, words: number, chunkDelayMs: number, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    signal,
    headers: { ...identity, "content-type": "application/json", "x-demo-chunk-delay-ms": String(chunkDelayMs) },
    body: JSON.stringify({
      model: "demo-small",
      stream: true,
      messages: [{ role: "user", content: Array.from({ length: words }, (_, i) => `w${i}`).join(" ") }],
    }),
  });
}

describe("lifecycle", { timeout: 300_000 }, () => {
  let upstream: UpstreamProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
  });

  after(async () => {
    await upstream?.close();
  });

  describe("graceful shutdown", () => {
    test("SIGTERM during a streamed response lets it finish, takes no new connections, and exits 0", { timeout: 40_000 }, async () => {
      const gateway = await startGateway({ config: headerAuthConfig(upstream.url) });
      try {
        const res = await chatStream(gateway.url, 6, 150);
        assert.equal(res.status, 200);
        const reader = res.body!.getReader();
        const decoder = new TextDecoder();
        let text = decoder.decode((await reader.read()).value);

        const stopped = gateway.stop("SIGTERM");
        // Wait until the gateway has begun draining, then try a new request on a new connection.
        await everyServerDraining(gateway);
        const fresh = new Agent();
        const late = await request(`${gateway.url}/health`, { dispatcher: fresh }).then(
          async (r) => ({ status: r.statusCode, body: await r.body.text() }),
          (err: NodeJS.ErrnoException) => ({ status: 0, body: String(err.code) }),
        );
        await fresh.close();
        // Refused, or (in the instant between the signal and the listener closing) accepted and then closed or answered 503.
        if (late.status === 0) assert.match(late.body, /^(ECONNREFUSED|ECONNRESET|EPIPE|UND_ERR_SOCKET)$/);
        else {
          assert.equal(late.status, 503);
          assert.equal((JSON.parse(late.body) as { error: { code: string } }).error.code, "shutting_down");
        }

        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += decoder.decode(value);
        }
        assert.match(text, /data: \[DONE\]\n\n$/);
        assert.match(text, /"content":" w5"/);
        assert.equal(await stopped, 0);
        const messages = gateway.logLines().map((l) => l.msg);
        assert.ok(messages.includes("stopped"));
      } finally {
        await gateway.close();
      }
    });

    test("a request arriving on an open connection during the drain gets 503 shutting_down", { timeout: 40_000 }, async () => {
      const gateway = await startGateway({ config: headerAuthConfig(upstream.url) });
      try {
        const { hostname, port } = new URL(gateway.url);
        const socket = net.connect({ host: hostname, port: Number(port) });
        let received = "";
        const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
        const firstData = new Promise<void>((resolve) => socket.once("data", () => resolve()));
        socket.on("data", (chunk: Buffer) => (received += chunk.toString()));
        const body = JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: "a b c d" }] });
        socket.write(
          [
            "POST /v1/chat/completions HTTP/1.1",
            `Host: ${hostname}:${port}`,
            "x-user: dora",
            "content-type: application/json",
            "x-demo-chunk-delay-ms: 200",
            `content-length: ${Buffer.byteLength(body)}`,
            "",
            body,
          ].join("\r\n"),
        );
        await firstData;
        const stopped = gateway.stop("SIGTERM");
        await everyServerDraining(gateway);
        // Same connection, so it is not idle: the request reaches the gateway while it drains.
        socket.write(`GET /v1/models HTTP/1.1\r\nHost: ${hostname}:${port}\r\nx-user: dora\r\n\r\n`);
        await closed;
        assert.match(received, /data: \[DONE\]/);
        assert.match(received, /HTTP\/1\.1 503 Service Unavailable\r\n/);
        assert.match(received, /"code":"shutting_down"/);
        assert.equal(await stopped, 0);
      } finally {
        await gateway.close();
      }
    });

    test("a stream still running after shutdown_timeout_ms is cut, and the process exits 0", { timeout: 40_000 }, async () => {
      const gateway = await startGateway({ config: headerAuthConfig(upstream.url, { shutdown_timeout_ms: 400 }) });
      try {
        const res = await chatStream(gateway.url, 8, 1000);
        const reader = res.body!.getReader();
        await reader.read();
        const started = Date.now();
        const stopped = gateway.stop("SIGTERM");
        await assert.rejects(async () => {
          for (;;) if ((await reader.read()).done) break;
        });
        assert.equal(await stopped, 0);
        assert.ok(Date.now() - started < 5000, "shutdown took too long");
        assert.ok(gateway.logLines().some((l) => /shutdown timeout/.test(String(l.msg))));
      } finally {
        await gateway.close();
      }
    });

    test("SIGINT with nothing in flight exits 0 at once", { timeout: 40_000 }, async () => {
      const gateway = await startGateway({ config: headerAuthConfig(upstream.url) });
      try {
        // A keep-alive connection left idle must not hold the shutdown up.
        await fetch(`${gateway.url}/v1/models`, { headers: identity });
        const started = Date.now();
        assert.equal(await gateway.stop("SIGINT"), 0);
        assert.ok(Date.now() - started < 3000);
      } finally {
        await gateway.close();
      }
    });
  });

  describe("start-up failures", () => {
    function serveFails(args: string[], cwd?: string): { status: number | null; stderr: string } {
      const result = spawnSync(process.execPath, [distFile("cli/main.js"), "serve", ...args], {
        cwd,
        encoding: "utf8",
        timeout: 30_000,
      });
      return { status: result.status, stderr: result.stderr };
    }

    test("an unreadable TLS certificate fails with the config path named", { timeout: 40_000 }, () => {
      const dir = mkdtempSync(join(tmpdir(), "tollgate-tls-"));
      try {
        const file = join(dir, "tollgate.yaml");
        writeFileSync(
          file,
          JSON.stringify({ ...headerAuthConfig(upstream.url), server: { ...headerAuthConfig(upstream.url).server, tls: { cert_file: "./missing.pem", key_file: "./missing-key.pem" } } }),
        );
        const { status, stderr } = serveFails(["--config", file, "--port", "0"], dir);
        assert.equal(status, 1);
        // Named as the config file's folder resolves it (docs/security.md), whatever the working directory.
        assert.ok(stderr.includes(`server.tls.cert_file: cannot read ${join(dir, "missing.pem")}: ENOENT`), stderr);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("a port already in use fails with a one-line reason", { timeout: 40_000 }, async () => {
      const blocker = net.createServer();
      await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
      const { port } = blocker.address() as net.AddressInfo;
      const dir = mkdtempSync(join(tmpdir(), "tollgate-port-"));
      try {
        const file = join(dir, "tollgate.yaml");
        writeFileSync(file, JSON.stringify(headerAuthConfig(upstream.url)));
        const { status, stderr } = serveFails(["--config", file, "--port", String(port)], dir);
        assert.equal(status, 1);
        assert.match(stderr, /^tollgate: .*EADDRINUSE/m);
      } finally {
        rmSync(dir, { recursive: true, force: true });
        await new Promise<void>((resolve) => blocker.close(() => resolve()));
      }
    });

    test("--port must be a port number", { timeout: 40_000 }, () => {
      const { status, stderr } = serveFails(["--port", "http"]);
      assert.notEqual(status, 0);
      assert.match(stderr, /expected a port number/);
    });
  });

  describe("TLS", () => {
    let dir: string;
    let cert: string | undefined;
    let gateway: GatewayProcess | undefined;

    before(() => {
      dir = mkdtempSync(join(tmpdir(), "tollgate-tls-"));
      try {
        execFileSync(
          "openssl",
          ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
          { stdio: "ignore" },
        );
        cert = readFileSync(join(dir, "cert.pem"), "utf8");
      } catch {
        cert = undefined; // no openssl here: the test below says so and skips
      }
    });

    after(async () => {
      await gateway?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("with server.tls the gateway serves HTTPS and forwards as usual", { timeout: 40_000 }, async (t) => {
      if (cert === undefined) {
        t.skip("openssl is not available to make a test certificate");
        return;
      }
      gateway = await startGateway({
        config: headerAuthConfig(upstream.url, { tls: { cert_file: join(dir, "cert.pem"), key_file: join(dir, "key.pem") } }),
        ca: cert,
      });
      assert.match(gateway.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      const agent = new Agent({ connect: { ca: cert } });
      try {
        const res = await request(`${gateway.url}/api/version`, { dispatcher: agent, headers: { ...identity, "x-demo-echo": "1" } });
        assert.equal(res.statusCode, 200);
        const seen = (await res.body.json()) as { headers: Record<string, string> };
        assert.equal(seen.headers["x-forwarded-proto"], "https");
      } finally {
        await agent.close();
      }
    });
  });
});

/**
 * Resolves once every process serving requests has begun draining: the
 * gateway, or under --workers each worker (told by the supervisor, whose own
 * "shutting down" line comes first; a request a worker takes before it hears
 * is still served).
 */
async function everyServerDraining(gateway: GatewayProcess): Promise<void> {
  const pidsLogging = (msg: string) => new Set(gateway.logLines().filter((l) => l.msg === msg).map((l) => l.pid));
  await gateway.waitForLog(() => {
    const draining = pidsLogging("shutting down: draining in-flight requests");
    return [...pidsLogging("listening")].every((pid) => draining.has(pid));
  });
}
