import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { createTollgate } from "../../src/adapters/node.js";
import { captureLog } from "../support/log.js";
import { clearOfWindowEnd } from "../support/windows.js";

test("the node:http adapter applies quotas and sets the RateLimit fields on the response", async () => {
  const tollgate = await createTollgate({
    config: {
      server: {
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
        quota: { kvstore: { type: "sqlite", db_path: ":memory:" }, authenticated_max_requests: 1, period: "minute" },
      },
    },
    log: captureLog().log,
  });
  const server = http.createServer(async (req, res) => {
    const ctx = await tollgate.authenticate(req, res);
    if (!ctx) return;
    res.end(`hello ${ctx.user?.principal}`);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  try {
    await clearOfWindowEnd("minute", 10_000);
    const ok = await fetch(url, { headers: { "x-user": "ada" } });
    assert.equal(await ok.text(), "hello ada");
    assert.equal(ok.headers.get("ratelimit-policy"), '"requests-minute";q=1;w=60');
    assert.match(ok.headers.get("ratelimit")!, /^"requests-minute";r=0;t=\d+$/);
    const refused = await fetch(url, { headers: { "x-user": "ada" } });
    assert.equal(refused.status, 429);
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, "rate_limit_exceeded");
    assert.ok(refused.headers.get("retry-after"));
  } finally {
    server.close();
    await tollgate.close();
  }
});
