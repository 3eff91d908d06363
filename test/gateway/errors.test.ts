import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { linesContaining, rawRequest, startGateway, type GatewayProcess, type RawResponse } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";
import { closedPort } from "../support/refusal.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";

// Every way a request can fail, end to end: the exact status, envelope and
// headers the client sees, that a refused request never reached the
// upstream (each carries a tag the upstream records), and that the gateway
// keeps serving afterwards.

const TOKEN = "tok-carol-T7bX2kQ9sd";
const MAX_BODY = 1024;

interface Envelope {
  error: { message: string; type: string; code: string; param: null };
}

async function assertEnvelope(
  res: Response | RawResponse,
  status: number,
  error: { message: string | RegExp; type: string; code: string },
): Promise<void> {
  const text = res instanceof Response ? await res.text() : res.body;
  assert.equal(res.status, status, text);
  const contentType = res instanceof Response ? res.headers.get("content-type") : res.headers["content-type"];
  assert.equal(contentType, "application/json; charset=utf-8");
  const body = JSON.parse(text) as Envelope;
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
  if (typeof error.message === "string") assert.equal(body.error.message, error.message);
  else assert.match(body.error.message, error.message);
  assert.equal(body.error.type, error.type);
  assert.equal(body.error.code, error.code);
}

describe("errors", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;
  let noUpstream: GatewayProcess;
  let noAuth: GatewayProcess;
  let host: string;

  before(async () => {
    upstream = await startUpstreamProcess();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "carol" } } });
    const [deadPort, deadAuthPort] = [await closedPort(), await closedPort()];
    [gateway, noUpstream, noAuth] = await Promise.all([
      startGateway({
        config: {
          server: { auth: { provider_config: { type: "custom", endpoint: auth.url } }, max_body_bytes: MAX_BODY },
          upstream: { url: upstream.url, response_timeout_ms: 500, idle_timeout_ms: 700 },
        },
      }),
      startGateway({
        config: {
          server: { auth: { provider_config: { type: "custom", endpoint: auth.url } } },
          upstream: { url: `http://127.0.0.1:${deadPort}` },
        },
      }),
      startGateway({
        config: {
          server: { auth: { provider_config: { type: "custom", endpoint: `http://127.0.0.1:${deadAuthPort}/validate`, timeout_ms: 2000 } } },
          upstream: { url: upstream.url },
        },
      }),
    ]);
    host = new URL(gateway.url).host;
  });

  after(async () => {
    await Promise.all([gateway?.close(), noUpstream?.close(), noAuth?.close()]);
    await auth?.close();
    await upstream?.close();
  });

  const authorized = { authorization: `Bearer ${TOKEN}` };

  /** The exact bytes of a request, with Host and Connection: close. */
  function raw(requestLine: string, headers: string[] = []): string {
    return [requestLine, `Host: ${host}`, ...headers, "Connection: close", "", ""].join("\r\n");
  }

  describe("credentials", () => {
    test("a tagged request that passes reaches the upstream with its tag (what the refusal checks below look for)", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...authorized, ...headers } });
      assert.equal(res.status, 200);
      await assertForwarded(upstream, tag);
    });

    test("no credential: 401 missing_credential with a bare Bearer challenge", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers });
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate"');
      await assertEnvelope(res, 401, { message: /^Authentication required/, type: "authentication_error", code: "missing_credential" });
      await assertNotForwarded(upstream, tag);
    });

    test("an unknown token: 401 invalid_token with error=\"invalid_token\"", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer tok-unknown", ...headers } });
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="tollgate", error="invalid_token"');
      await assertEnvelope(res, 401, { message: "Authentication failed: 401", type: "authentication_error", code: "invalid_token" });
      await assertNotForwarded(upstream, tag);
    });

    test("another scheme: 401 invalid_request", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Basic YWxpY2U6c2VjcmV0", ...headers } });
      // The reference's exact words; the detail is in the challenge (RFC 6750 §3 error_description).
      assert.equal(res.headers.get("www-authenticate"), `Bearer realm="tollgate", error="invalid_request", error_description="expected 'Bearer <token>'"`);
      await assertEnvelope(res, 401, {
        message: "Invalid Authorization header format",
        type: "authentication_error",
        code: "invalid_request",
      });
      await assertNotForwarded(upstream, tag);
    });

    test("an empty bearer token: 401 invalid_request", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer ", ...headers } });
      assert.match(res.headers.get("www-authenticate") ?? "", /error_description="empty bearer token"/);
      await assertEnvelope(res, 401, {
        message: "Invalid Authorization header format",
        type: "authentication_error",
        code: "invalid_request",
      });
      await assertNotForwarded(upstream, tag);
    });

    test("an empty Authorization header counts as no credential", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/models HTTP/1.1", ["Authorization: ", line]));
      await assertEnvelope(res, 401, { message: /^Authentication required/, type: "authentication_error", code: "missing_credential" });
      await assertNotForwarded(upstream, tag);
    });

    test("two credentials in one header: 401 invalid_request", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${TOKEN} tok-other`, ...headers } });
      assert.match(res.headers.get("www-authenticate") ?? "", /error_description="exactly one bearer token is allowed"/);
      await assertEnvelope(res, 401, {
        message: "Invalid Authorization header format",
        type: "authentication_error",
        code: "invalid_request",
      });
      await assertNotForwarded(upstream, tag);
    });

    test("two Authorization headers: 401, even when the first is valid", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(
        gateway.url,
        raw("GET /v1/models HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, "Authorization: Bearer tok-other", line]),
      );
      assert.match(res.headers["www-authenticate"] ?? "", /error_description="exactly one Authorization header is allowed"/);
      await assertEnvelope(res, 401, {
        message: "Invalid Authorization header format",
        type: "authentication_error",
        code: "invalid_request",
      });
      await assertNotForwarded(upstream, tag);
    });

    test("the identity service unreachable: 503 with Retry-After, and the cause is logged without the token", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${noAuth.url}/v1/models`, { headers: { ...authorized, ...headers } });
      assert.equal(res.headers.get("retry-after"), "1");
      await assertEnvelope(res, 503, {
        message: "Authentication service unavailable",
        type: "service_unavailable",
        code: "identity_provider_unavailable",
      });
      await noAuth.waitForLog((l) => l.level === 40 && /unreachable/.test(String(l.msg)));
      assert.deepEqual(linesContaining(noAuth.stdout() + noAuth.stderr(), TOKEN), []);
      await assertNotForwarded(upstream, tag);
    });
  });

  describe("paths and methods", () => {
    test("'..' above the root: 400 invalid_path", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/../../etc/passwd HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 400, { message: "Invalid request path: '..' above the root", type: "invalid_request_error", code: "invalid_path" });
      await assertNotForwarded(upstream, tag);
    });

    test("encoded dots above the root: 400 invalid_path", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/%2e%2e/%2E%2E/x HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 400, { message: "Invalid request path: '..' above the root", type: "invalid_request_error", code: "invalid_path" });
      await assertNotForwarded(upstream, tag);
    });

    test("malformed percent-encoding: 400 invalid_path", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/models/%zz HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 400, { message: "Invalid request path: malformed percent-encoding", type: "invalid_request_error", code: "invalid_path" });
      await assertNotForwarded(upstream, tag);
    });

    test("an encoded slash: 400 invalid_path", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/models%2Fsecret HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 400, {
        message: "Invalid request path: encoded '/', '\\' or NUL is not allowed",
        type: "invalid_request_error",
        code: "invalid_path",
      });
      await assertNotForwarded(upstream, tag);
    });

    test("an absolute-form target: 400 invalid_path", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET http://elsewhere.example/v1/models HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 400, { message: "Invalid request path: expected an absolute path", type: "invalid_request_error", code: "invalid_path" });
      await assertNotForwarded(upstream, tag);
    });

    test("TRACE is never forwarded: 405", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("TRACE /v1/models HTTP/1.1", [`Authorization: Bearer ${TOKEN}`, line]));
      await assertEnvelope(res, 405, { message: "Method TRACE is not allowed", type: "invalid_request_error", code: "method_not_allowed" });
      await assertNotForwarded(upstream, tag);
    });
  });

  describe("malformed HTTP", () => {
    test("headers over 16 KiB: 431 envelope", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/models HTTP/1.1", [`X-Padding: ${"a".repeat(17 * 1024)}`, line]));
      await assertEnvelope(res, 431, { message: "Request header fields too large", type: "invalid_request_error", code: "headers_too_large" });
      assert.equal(res.headers.connection, "close");
      await assertNotForwarded(upstream, tag);
    });

    test("a malformed header line: 400 envelope", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(gateway.url, raw("GET /v1/models HTTP/1.1", ["this is not a header", line]));
      await assertEnvelope(res, 400, { message: "Malformed HTTP request", type: "invalid_request_error", code: "malformed_request" });
      await assertNotForwarded(upstream, tag);
    });

    test("garbage instead of a request line: 400 envelope", { timeout: 10_000 }, async () => {
      const res = await rawRequest(gateway.url, "\x16\x03\x01 definitely not http\r\n\r\n");
      await assertEnvelope(res, 400, { message: "Malformed HTTP request", type: "invalid_request_error", code: "malformed_request" });
    });

    test("both Content-Length and Transfer-Encoding: 400 envelope", { timeout: 10_000 }, async () => {
      const { tag, line } = newTag();
      const res = await rawRequest(
        gateway.url,
        raw("POST /v1/chat/completions HTTP/1.1", ["Content-Length: 5", "Transfer-Encoding: chunked", line]) + "0\r\n\r\n",
      );
      await assertEnvelope(res, 400, { message: "Malformed HTTP request", type: "invalid_request_error", code: "malformed_request" });
      await assertNotForwarded(upstream, tag);
    });
  });

  describe("bodies", () => {
    test("a declared Content-Length over max_body_bytes: 413 before anything goes upstream", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { ...authorized, ...headers, "content-type": "application/json" },
        body: JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "x".repeat(MAX_BODY) }] }),
      });
      await assertEnvelope(res, 413, { message: `Request body exceeds the limit of ${MAX_BODY} bytes`, type: "invalid_request_error", code: "request_too_large" });
      await assertNotForwarded(upstream, tag);
    });

    test("a chunked body that grows over max_body_bytes: 413", { timeout: 10_000 }, async () => {
      const { tag, headers } = newTag();
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent >= MAX_BODY * 4) controller.close();
          else {
            sent += 256;
            controller.enqueue(new Uint8Array(256).fill(120));
          }
        },
      });
      const res = await fetch(`${gateway.url}/v1/files`, {
        method: "POST",
        headers: { ...authorized, ...headers, "content-type": "application/octet-stream" },
        body: stream,
        duplex: "half",
      } as RequestInit);
      await assertEnvelope(res, 413, { message: `Request body exceeds the limit of ${MAX_BODY} bytes`, type: "invalid_request_error", code: "request_too_large" });
      await assertNotForwarded(upstream, tag);
    });

    test("a body of exactly max_body_bytes is forwarded", { timeout: 10_000 }, async () => {
      const res = await fetch(`${gateway.url}/generate`, { method: "POST", headers: { ...authorized, "x-demo-echo": "1" }, body: "y".repeat(MAX_BODY) });
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { body: string }).body.length, MAX_BODY);
    });
  });

  describe("upstream failures", () => {
    test("upstream refusing connections: 502 'Upstream server unavailable'", { timeout: 10_000 }, async () => {
      const res = await fetch(`${noUpstream.url}/v1/models`, { headers: authorized });
      await assertEnvelope(res, 502, { message: "Upstream server unavailable", type: "upstream_error", code: "bad_gateway" });
    });

    test("upstream slower than response_timeout_ms: 504 'Upstream server timed out'", { timeout: 10_000 }, async () => {
      const started = Date.now();
      const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...authorized, "x-demo-delay-ms": "5000" } });
      await assertEnvelope(res, 504, { message: "Upstream server timed out", type: "upstream_error", code: "gateway_timeout" });
      assert.ok(Date.now() - started < 3000, "the timeout did not apply");
    });

    test("the upstream failing mid-stream cuts the client's connection", { timeout: 10_000 }, async () => {
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { ...authorized, "content-type": "application/json", "x-demo-reset-after-chunks": "2" },
        body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: "a b c d e f" }] }),
      });
      assert.equal(res.status, 200);
      await assert.rejects(res.text());
    });

    test("an upstream silent mid-stream for longer than idle_timeout_ms is cut, and so is the client", { timeout: 10_000 }, async () => {
      const id = randomUUID();
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        headers: { ...authorized, "content-type": "application/json", "x-demo-chunk-delay-ms": "2000", "x-test-id": id },
        body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: "a b" }] }),
      });
      assert.equal(res.status, 200);
      const started = Date.now();
      await assert.rejects(res.text());
      assert.ok(Date.now() - started < 1800, "the idle timeout did not apply");
      const record = await upstream.waitForRequest((r) => r.headers["x-test-id"] === id && (r.aborted || r.completed), 5000);
      assert.equal(record.aborted, true);
    });

    test("a client that goes away mid-stream aborts the upstream request", { timeout: 10_000 }, async () => {
      const id = randomUUID();
      const controller = new AbortController();
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: "POST",
        signal: controller.signal,
        headers: { ...authorized, "content-type": "application/json", "x-demo-chunk-delay-ms": "200", "x-test-id": id },
        body: JSON.stringify({ model: "demo-small", stream: true, messages: [{ role: "user", content: "a b c d e f g h" }] }),
      });
      const reader = res.body!.getReader();
      const first = await reader.read();
      assert.match(new TextDecoder().decode(first.value), /^data: /);
      controller.abort();
      const record = await upstream.waitForRequest((r) => r.headers["x-test-id"] === id && (r.aborted || r.completed), 5000);
      assert.equal(record.aborted, true);
    });

    test("a client that goes away while the upstream thinks aborts the upstream request", { timeout: 10_000 }, async () => {
      const id = randomUUID();
      const controller = new AbortController();
      const pending = fetch(`${gateway.url}/v1/models`, {
        signal: controller.signal,
        headers: { ...authorized, "x-demo-delay-ms": "400", "x-test-id": id },
      });
      await upstream.waitForRequest((r) => r.headers["x-test-id"] === id);
      controller.abort();
      await assert.rejects(pending);
      const record = await upstream.waitForRequest((r) => r.headers["x-test-id"] === id && (r.aborted || r.completed), 5000);
      assert.equal(record.aborted, true);
    });
  });

  test("after all of the above, every gateway still answers /health and serves requests", { timeout: 10_000 }, async () => {
    for (const g of [gateway, noUpstream, noAuth]) {
      assert.equal((await fetch(`${g.url}/health`)).status, 200);
    }
    const res = await fetch(`${gateway.url}/v1/models`, { headers: authorized });
    assert.equal(res.status, 200);
  });

  test("no token appears in any gateway's output", { timeout: 10_000 }, async () => {
    for (const g of [gateway, noUpstream, noAuth]) {
      const output = g.stdout() + g.stderr();
      for (const secret of [TOKEN, "tok-other", "tok-unknown", "YWxpY2U6c2VjcmV0"]) {
        assert.deepEqual(linesContaining(output, secret), [], `${secret} was logged`);
      }
    }
  });
});
