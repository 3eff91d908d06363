import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { text } from "node:stream/consumers";
import { describe, test } from "node:test";
import { PayloadTooLargeError } from "../../src/core/errors.js";
import { checkDeclaredLength, hasBody, limitBody } from "../../src/gateway/request-body.js";
import { upstreamFailure, upstreamPath } from "../../src/gateway/forward.js";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "../../src/gateway/headers.js";

// The pure pieces of forwarding; the end-to-end tests check the same rules on the wire.

const forwarded = { remoteAddress: "192.0.2.7", proto: "http" as const, host: "gw.example:8321" };

function pairs(flat: string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

describe("upstreamRequestHeaders", () => {
  test("keeps end-to-end headers with the client's spelling and duplicates", () => {
    const out = upstreamRequestHeaders(["Content-Type", "application/json", "X-Tag", "a", "x-tag", "b"], { forwarded });
    assert.deepEqual(pairs(out).slice(0, 3), [["Content-Type", "application/json"], ["X-Tag", "a"], ["x-tag", "b"]]);
  });

  test("drops hop-by-hop headers, Host, Expect and whatever Connection names", () => {
    const raw = [
      "Host", "gw", "Connection", "keep-alive, X-Hop", "connection", "x-other-hop", "X-Hop", "1", "X-Other-Hop", "2",
      "Keep-Alive", "timeout=5", "TE", "trailers", "Trailer", "x", "Transfer-Encoding", "chunked", "Upgrade", "h2c",
      "Proxy-Authorization", "Basic eA==", "Proxy-Connection", "keep-alive", "Expect", "100-continue", "X-End", "yes",
    ];
    const names = pairs(upstreamRequestHeaders(raw, { forwarded })).map(([n]) => n);
    assert.deepEqual(names, ["X-End", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]);
  });

  test("replaces the client's Authorization with the upstream key, or drops it", () => {
    const raw = ["Authorization", "Bearer client-token", "authorization", "Bearer second"];
    assert.ok(!upstreamRequestHeaders(raw, { forwarded }).some((v) => v.includes("client-token") || v.includes("second")));
    const withKey = pairs(upstreamRequestHeaders(raw, { apiKey: "sk-up", forwarded }));
    assert.deepEqual(withKey.filter(([n]) => n.toLowerCase() === "authorization"), [["authorization", "Bearer sk-up"]]);
  });

  test("sends the gateway's request id in place of every client copy, and the client's when none is given", () => {
    const raw = ["X-Request-Id", "client-1", "x-request-id", "client-2"];
    const out = pairs(upstreamRequestHeaders(raw, { requestId: "req-9", forwarded }));
    assert.deepEqual(out.filter(([n]) => n.toLowerCase() === "x-request-id"), [["x-request-id", "req-9"]]);
    const kept = pairs(upstreamRequestHeaders(raw, { forwarded }));
    assert.deepEqual(kept.filter(([n]) => n.toLowerCase() === "x-request-id"), [["X-Request-Id", "client-1"], ["x-request-id", "client-2"]]);
  });

  test("drops every client-sent principal header and sets the authenticated principal", () => {
    const raw = ["X-Principal", "mallory", "x-principal", "root"];
    const out = pairs(upstreamRequestHeaders(raw, { principalHeader: "x-principal", principal: "alice", forwarded }));
    assert.deepEqual(out.filter(([n]) => n.toLowerCase() === "x-principal"), [["x-principal", "alice"]]);
    const anonymous = pairs(upstreamRequestHeaders(raw, { principalHeader: "x-principal", forwarded }));
    assert.deepEqual(anonymous.filter(([n]) => n.toLowerCase() === "x-principal"), []);
  });

  test("a Connection header cannot remove the headers the gateway sets", () => {
    const raw = ["Connection", "authorization, x-principal, x-forwarded-for"];
    const out = pairs(upstreamRequestHeaders(raw, { apiKey: "k", principalHeader: "x-principal", principal: "alice", forwarded }));
    assert.deepEqual(out, [
      ["authorization", "Bearer k"],
      ["x-principal", "alice"],
      ["x-forwarded-for", "192.0.2.7"],
      ["x-forwarded-proto", "http"],
      ["x-forwarded-host", "gw.example:8321"],
    ]);
  });

  test("appends the peer to X-Forwarded-For and replaces the other forwarding headers", () => {
    const raw = ["X-Forwarded-For", "10.0.0.1", "x-forwarded-for", "10.0.0.2", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil", "Forwarded", "for=1.1.1.1"];
    assert.deepEqual(pairs(upstreamRequestHeaders(raw, { forwarded })), [
      ["x-forwarded-for", "10.0.0.1, 10.0.0.2, 192.0.2.7"],
      ["x-forwarded-proto", "http"],
      ["x-forwarded-host", "gw.example:8321"],
    ]);
  });
});

describe("downstreamResponseHeaders", () => {
  test("drops hop-by-hop headers and those the upstream's Connection names; keeps the rest", () => {
    const out = downstreamResponseHeaders({
      connection: "keep-alive, x-internal",
      "keep-alive": "timeout=4",
      "transfer-encoding": "chunked",
      "x-internal": "1",
      "proxy-authenticate": "Basic",
      "content-type": "text/event-stream",
      "set-cookie": ["a=1", "b=2"],
      "x-request-id": "r1",
    });
    assert.deepEqual(out, { "content-type": "text/event-stream", "set-cookie": ["a=1", "b=2"], "x-request-id": "r1" });
  });
});

describe("upstreamPath", () => {
  test("joins the upstream's base path and the canonical path, then the raw query", () => {
    assert.equal(upstreamPath("/", "/v1/models", ""), "/v1/models");
    assert.equal(upstreamPath("/openai", "/v1/models", "a=1&b=%20"), "/openai/v1/models?a=1&b=%20");
    assert.equal(upstreamPath("/openai/", "/v1/models", ""), "/openai/v1/models");
  });
});

describe("upstreamFailure", () => {
  test("maps a headers timeout to 504 and every other failure to 502, keeping the cause", () => {
    const timeout = upstreamFailure(Object.assign(new Error("Headers Timeout Error"), { code: "UND_ERR_HEADERS_TIMEOUT" }));
    assert.equal(timeout.status, 504);
    assert.equal(timeout.message, "Upstream server timed out");
    const refused = Object.assign(new Error("connect ECONNREFUSED 10.1.2.3:80"), { code: "ECONNREFUSED" });
    const failure = upstreamFailure(refused);
    assert.equal(failure.status, 502);
    assert.equal(failure.message, "Upstream server unavailable");
    assert.equal(failure.cause, refused);
  });
});

describe("request bodies", () => {
  test("hasBody: a declared length above 0, or chunked", () => {
    assert.equal(hasBody({}), false);
    assert.equal(hasBody({ "content-length": "0" }), false);
    assert.equal(hasBody({ "content-length": "3" }), true);
    assert.equal(hasBody({ "transfer-encoding": "chunked" }), true);
  });

  test("checkDeclaredLength refuses a Content-Length over the limit", () => {
    assert.doesNotThrow(() => checkDeclaredLength({ "content-length": "10" }, 10));
    assert.throws(() => checkDeclaredLength({ "content-length": "11" }, 10), PayloadTooLargeError);
  });

  test("limitBody passes a body up to the limit and fails one beyond it", async () => {
    assert.equal(await text(limitBody(Readable.from([Buffer.from("12345"), Buffer.from("67890")]), { maxBytes: 10, idleMs: 60_000 })), "1234567890");
    await assert.rejects(text(limitBody(Readable.from([Buffer.from("12345"), Buffer.from("678901")]), { maxBytes: 10, idleMs: 60_000 })), PayloadTooLargeError);
  });
});
