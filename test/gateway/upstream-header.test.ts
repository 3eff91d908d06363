import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The upstream_header provider believes identity headers only from the
// proxies named in `trusted_proxies`, checked over real HTTP against the
// peer address the gateway's socket sees: the gateway listens on 127.0.0.1,
// the trusted proxy connects from 127.0.0.1 and a client that reached the
// gateway directly from 127.0.0.2 (another loopback address: Linux routes
// all of 127.0.0.0/8 to lo).

const UNTRUSTED_PEER = "127.0.0.2";

interface Answer {
  status: number;
  body: string;
}

/** `GET path` from the local address `from`, with `headers`. */
function getFrom(base: string, from: string, path: string, headers: Record<string, string>): Promise<Answer> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, path, headers, localAddress: from }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.setTimeout(5000, () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end();
  });
}

describe("upstream_header identity over real HTTP, from trusted and untrusted peers", { timeout: 60_000 }, () => {
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
    gateway = await startGateway({
      config: {
        server: {
          host: "127.0.0.1",
          auth: {
            provider_config: {
              type: "upstream_header",
              principal_header: "x-user",
              attributes_header: "x-user-attributes",
              trusted_proxies: ["127.0.0.1/32"],
            },
          },
        },
        upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
      },
    });
  });

  after(async () => {
    await gateway?.close();
    await upstream?.close();
  });

  test("a trusted proxy's identity headers are honoured: the upstream sees its principal", async () => {
    const { tag, headers } = newTag();
    const res = await getFrom(gateway.url, "127.0.0.1", "/v1/models", { ...headers, "x-user": "alice", "x-user-attributes": '{"roles":["user"]}' });
    assert.equal(res.status, 200, res.body);
    const [seen] = await assertForwarded(upstream, tag);
    assert.equal(seen!.headers["x-tollgate-principal"], "alice");
  });

  test("an untrusted peer's identity headers are ignored: 401, and nothing reaches the upstream", async () => {
    const { tag, headers } = newTag();
    const res = await getFrom(gateway.url, UNTRUSTED_PEER, "/v1/models", { ...headers, "x-user": "alice", "x-user-attributes": '{"roles":["admin"]}' });
    assert.equal(res.status, 401, res.body);
    const error = (JSON.parse(res.body) as { error: { code: string; type: string; message: string } }).error;
    assert.equal(error.type, "authentication_error");
    assert.equal(error.code, "invalid_token");
    assert.equal(error.message, "Identity headers are only accepted from a trusted proxy");
    await assertNotForwarded(upstream, tag);
  });

  test("an untrusted peer cannot pass by claiming, in X-Forwarded-For, to come from the trusted proxy", async () => {
    const { tag, headers } = newTag();
    const res = await getFrom(gateway.url, UNTRUSTED_PEER, "/v1/models", {
      ...headers,
      "x-user": "alice",
      "x-forwarded-for": "127.0.0.1",
      forwarded: "for=127.0.0.1",
    });
    assert.equal(res.status, 401, res.body);
    await assertNotForwarded(upstream, tag);
  });
});
