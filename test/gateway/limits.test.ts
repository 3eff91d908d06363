import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { assertForwarded, assertNotForwarded, newTag, TAG_HEADER } from "../support/forwarded.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { parsePrometheus } from "../support/prometheus.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Bodies, headers and JSON that cannot hurt the gateway, over raw sockets
// where an HTTP client would normalise the request: each refusal has its
// status and code, the client reads it before the connection closes, and
// nothing reaches the upstream.

const TOKEN = "tok-dana-Lm3qZ8vR";
const MAX_BODY = 64 * 1024;
const MAX_BUFFERED = 100 * 1024;
const IDLE_MS = 500;

/** What came back on a raw connection: the response (status 0 when none) and how the connection ended. */
interface Exchange {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The connection was reset (ECONNRESET/EPIPE) before the response was complete. */
  reset: boolean;
}

/**
 * Opens a connection, writes `head`, then lets `send` write the body (it may
 * keep writing while the answer arrives), and resolves with the answer once
 * it is complete (with `untilClosed`, once the connection has closed too) or
 * the connection ends, or after `timeoutMs`.
 */
function exchange(url: string, head: string, send?: (socket: net.Socket) => void, { timeoutMs = 10_000, untilClosed = false } = {}): Promise<Exchange> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    let reset = false;
    let done = false;
    const finish = () => {
      if (done) return;
      const text = Buffer.concat(chunks).toString("latin1");
      const split = text.indexOf("\r\n\r\n");
      const headers: Record<string, string> = {};
      let status = 0;
      let body = "";
      if (split !== -1) {
        const [statusLine = "", ...lines] = text.slice(0, split).split("\r\n");
        status = Number(statusLine.split(" ")[1]);
        for (const line of lines) {
          const colon = line.indexOf(":");
          headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        body = text.slice(split + 4);
        const length = headers["content-length"];
        if (!socket.destroyed && (untilClosed || length === undefined || body.length < Number(length))) return;
      } else if (!socket.destroyed) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ status, headers, body, reset });
    };
    const timer = setTimeout(() => {
      socket.destroy();
      finish();
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      finish();
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "ECONNRESET" || err.code === "EPIPE") reset = true;
    });
    socket.on("close", () => finish());
    socket.write(head);
    send?.(socket);
  });
}

/** Writes `total` bytes as fast as the socket takes them (as chunked frames when `chunked`), stopping when the socket closes. */
function pour(total: number, chunked: boolean): (socket: net.Socket) => void {
  return (socket) => {
    const piece = Buffer.alloc(16 * 1024, 0x20);
    let sent = 0;
    const write = () => {
      while (sent < total && !socket.destroyed && socket.writable) {
        sent += piece.length;
        const ok = socket.write(chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from("\r\n")]) : piece);
        if (!ok) return void socket.once("drain", write);
      }
      if (sent >= total && chunked && socket.writable) socket.write("0\r\n\r\n");
    };
    write();
  };
}

describe("limits", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;
  let host: string;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "tollgate-limits-"));
    upstream = await startUpstreamProcess();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "dana" } } });
    gateway = await startGateway({
      config: {
        server: {
          auth: { provider_config: { type: "custom", endpoint: auth.url } },
          // Token budgets on: inference bodies are read for their usage options.
          quota: { kvstore: { type: "sqlite", db_path: join(dir, "quota.db") }, limits: [{ tokens: 10_000_000, period: "day" }] },
          max_body_bytes: MAX_BODY,
          max_buffered_bytes: MAX_BUFFERED,
          body_idle_timeout_ms: IDLE_MS,
        },
        upstream: { url: upstream.url },
      },
    });
    host = new URL(gateway.url).host;
  });

  after(async () => {
    await gateway?.close();
    await auth?.close();
    await upstream?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A request head with Host, the credential and a tag the upstream would record (forwarded.ts). */
  function head(requestLine: string, tag: string, headers: string[] = []): string {
    return [requestLine, `Host: ${host}`, `Authorization: Bearer ${TOKEN}`, `${TAG_HEADER}: ${tag}`, ...headers, "", ""].join("\r\n");
  }

  function assertError(res: Exchange, status: number, code: string, type = "invalid_request_error"): void {
    assert.equal(res.status, status, `${res.status} ${res.body}${res.reset ? " (reset)" : ""}`);
    const body = JSON.parse(res.body) as { error: { code: string; type: string } };
    assert.equal(body.error.code, code);
    assert.equal(body.error.type, type);
  }

  const chat = (extra: Record<string, unknown> = {}) => JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "hi" }], ...extra });

  describe("body idle timeout", () => {
    test("an inference body that stops arriving: 408 request_timeout after body_idle_timeout_ms, nothing forwarded", async () => {
      const id = newTag().tag;
      const body = chat();
      const started = Date.now();
      const res = await exchange(
        gateway.url,
        head("POST /v1/chat/completions HTTP/1.1", id, ["Content-Type: application/json", `Content-Length: ${body.length + 100}`]),
        (socket) => socket.write(body),
      );
      assertError(res, 408, "request_timeout");
      assert.equal(res.headers.connection, "close");
      const waited = Date.now() - started;
      assert.ok(waited >= IDLE_MS - 50 && waited < IDLE_MS + 3000, `answered after ${waited} ms`);
      await assertNotForwarded(upstream, id);
    });

    test("a streamed upload that stops arriving: 408, and the upstream request is aborted", async () => {
      const id = newTag().tag;
      const res = await exchange(
        gateway.url,
        head("POST /v1/files HTTP/1.1", id, ["Content-Type: application/octet-stream", "Content-Length: 5000"]),
        (socket) => socket.write("x".repeat(1000)),
      );
      assertError(res, 408, "request_timeout");
      const record = await upstream.waitForRequest((r) => r.headers[TAG_HEADER] === id && (r.aborted || r.completed), 5000);
      assert.equal(record.aborted, true, "the upstream request went on");
    });

    test("a streamed answer slower than body_idle_timeout_ms between events is not cut", async () => {
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json", "x-demo-chunk-delay-ms": String(IDLE_MS + 300) },
        body: chat({ stream: true, messages: [{ role: "user", content: "a b" }] }),
      });
      assert.equal(res.status, 200);
      assert.match(await res.text(), /data: \[DONE\]/);
    });
  });

  describe("bodies over max_body_bytes", () => {
    // An inference body is read whole by the gateway; an upload streams to the upstream as it comes.
    for (const [path, contentType] of [["/v1/chat/completions", "application/json"], ["/v1/files", "application/octet-stream"]]) {
      test(`a chunked body past the limit on ${path}: 413 request_too_large, read by the client still sending, then closed without a reset`, async () => {
        const id = newTag().tag;
        const res = await exchange(
          gateway.url,
          head(`POST ${path} HTTP/1.1`, id, [`Content-Type: ${contentType}`, "Transfer-Encoding: chunked"]),
          pour(8 * 1024 * 1024, true),
          { untilClosed: true },
        );
        assertError(res, 413, "request_too_large");
        assert.equal(res.headers.connection, "close");
        assert.equal(res.reset, false, "the connection was reset, not closed");
        // The upload's upstream request had started: it must have been aborted, never completed.
        if (path === "/v1/chat/completions") await assertNotForwarded(upstream, id);
        else {
          const seen = (await upstream.requests()).filter((r) => r.headers[TAG_HEADER] === id);
          assert.ok(seen.every((r) => !r.completed), "the upstream completed the request");
        }
      });
    }

    test("a declared Content-Length past the limit, the body still being sent: 413, no reset, nothing forwarded", async () => {
      const id = newTag().tag;
      const total = 8 * 1024 * 1024;
      const res = await exchange(
        gateway.url,
        head("POST /v1/chat/completions HTTP/1.1", id, ["Content-Type: application/json", `Content-Length: ${total}`]),
        pour(total, false),
        { untilClosed: true },
      );
      assertError(res, 413, "request_too_large");
      assert.equal(res.reset, false, "the connection was reset, not closed");
      await assertNotForwarded(upstream, id);
    });
  });

  describe("header fields", () => {
    /** `count` header fields in all: Host, Authorization, X-Request-Id, Connection and fillers. */
    const fillers = (count: number) => Array.from({ length: count - 4 }, () => "x:1");

    test("100 header fields (the default max_header_count) pass; 101 get 431 headers_too_large, nothing forwarded", async () => {
      const passed = newTag().tag;
      const ok = await exchange(gateway.url, head("GET /v1/models HTTP/1.1", passed, [...fillers(100), "Connection: close"]));
      assert.equal(ok.status, 200, ok.body);
      await assertForwarded(upstream, passed);
      const id = newTag().tag;
      const res = await exchange(gateway.url, head("GET /v1/models HTTP/1.1", id, [...fillers(101), "Connection: close"]));
      assertError(res, 431, "headers_too_large");
      await assertNotForwarded(upstream, id);
    });

    test("2,001 header fields with Content-Length last: 431, never a silently shortened header list upstream", async () => {
      const id = newTag().tag;
      const body = "x".repeat(MAX_BODY + 1);
      const res = await exchange(
        gateway.url,
        head("POST /v1/files HTTP/1.1", id, [...fillers(2_002), "Content-Type: application/octet-stream", `Content-Length: ${body.length}`, "Connection: close"]),
        (socket) => socket.write(body),
      );
      assertError(res, 431, "headers_too_large");
      await assertNotForwarded(upstream, id);
    });

    test("two Host headers: 400 duplicate_host, nothing forwarded", async () => {
      const id = newTag().tag;
      const res = await exchange(gateway.url, head("GET /v1/models HTTP/1.1", id, ["Host: upstream.internal", "Connection: close"]));
      assertError(res, 400, "duplicate_host");
      await assertNotForwarded(upstream, id);
    });
  });

  describe("JSON depth", () => {
    test("an inference body nested 10,000 deep with token budgets on: 400 json_too_deep, nothing forwarded", async () => {
      const id = newTag().tag;
      const body = `{"model":"demo-small","stream":true,"messages":[{"role":"user","content":"hi"}],"metadata":${"[".repeat(10_000)}${"]".repeat(10_000)}}`;
      const res = await exchange(
        gateway.url,
        head("POST /v1/chat/completions HTTP/1.1", id, ["Content-Type: application/json", `Content-Length: ${body.length}`, "Connection: close"]),
        (socket) => socket.write(body),
      );
      assertError(res, 400, "json_too_deep");
      await assertNotForwarded(upstream, id);
    });

    test("brackets inside strings do not count, and 128 levels pass", async () => {
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: chat({ messages: [{ role: "user", content: "[".repeat(10_000) }], metadata: JSON.parse("[".repeat(126) + "]".repeat(126)) as unknown }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(((await res.json()) as { object: string }).object, "chat.completion");
    });
  });

  describe("bytes buffered across requests", () => {
    test("bodies past max_buffered_bytes together: 503 overloaded with Retry-After, counted, nothing forwarded; the admitted one completes", async () => {
      const metricsBefore = parsePrometheus(await (await fetch(`${gateway.url}/metrics`)).text()).value("tollgate_overloaded_total");
      // A: 60 KiB declared, its last 40 bytes trickled one every 100 ms (within the idle timeout), so that the gateway holds its buffer.
      const firstId = newTag().tag;
      const body = chat({ user: "x".repeat(60 * 1024 - chat().length - 11) });
      let sent = body.length - 40;
      let firstSocket: net.Socket | undefined;
      const first = exchange(
        gateway.url,
        head("POST /v1/chat/completions HTTP/1.1", firstId, ["Content-Type: application/json", `Content-Length: ${body.length}`, "Connection: close"]),
        (socket) => {
          socket.write(body.slice(0, sent));
          firstSocket = socket;
        },
      );
      const trickle = setInterval(() => {
        if (sent < body.length - 1 && !firstSocket!.destroyed) firstSocket!.write(body.slice(sent, ++sent));
      }, 100);
      trickle.unref();
      // B: another 60 KiB while A is held: 60 + 60 > 100 KiB. Retried until A is surely held (its auth may take a moment).
      let refused: Exchange | undefined;
      const refusedIds: string[] = [];
      for (let attempt = 0; attempt < 50 && !refused; attempt++) {
        const id = newTag().tag;
        const res = await exchange(
          gateway.url,
          head("POST /v1/chat/completions HTTP/1.1", id, ["Content-Type: application/json", `Content-Length: ${body.length}`, "Connection: close"]),
          (socket) => socket.write(body),
        );
        if (res.status === 503) {
          refused = res;
          refusedIds.push(id);
        } else await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(refused, "no request was refused while the first held its buffer");
      assertError(refused, 503, "overloaded", "service_unavailable");
      assert.equal(refused.headers["retry-after"], "1");
      for (const id of refusedIds) await assertNotForwarded(upstream, id);
      const metricsAfter = parsePrometheus(await (await fetch(`${gateway.url}/metrics`)).text()).value("tollgate_overloaded_total");
      assert.ok(metricsAfter >= metricsBefore + 1, `tollgate_overloaded_total went from ${metricsBefore} to ${metricsAfter}`);
      // A finishes and is served; its buffer is given back: the same body now passes.
      clearInterval(trickle);
      firstSocket!.write(body.slice(sent));
      const firstRes = await first;
      assert.equal(firstRes.status, 200, firstRes.body);
      const again = await fetch(`${gateway.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body });
      assert.equal(again.status, 200);
    });
  });
});
