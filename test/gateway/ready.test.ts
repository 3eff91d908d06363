import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startCustomAuth } from "../support/custom-auth.js";
import { eventually } from "../support/eventually.js";
import { startGateway } from "../support/gateway.js";
import { startOidc } from "../support/oidc.js";
import { parsePrometheus } from "../support/prometheus.js";
import { throwawayRedisOrSkip } from "../support/redis-server.js";
import { closedPort } from "../support/refusal.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// GET /ready: 200 only when the stores answer and the identity provider
// answers now; 503 naming the failing part otherwise. /health stays the
// liveness probe and never checks a dependency.

interface Readiness {
  status: number;
  body: { status: string; checks: Record<string, string>; failing?: string[] };
}

async function ready(url: string): Promise<Readiness> {
  const res = await fetch(`${url}/ready`);
  return { status: res.status, body: (await res.json()) as Readiness["body"] };
}

/** Polls /ready until `want` holds (dependencies recover in the background), or fails with the last answer. */
function readyUntil(url: string, want: (r: Readiness) => boolean): Promise<Readiness> {
  return eventually(() => ready(url), want, { timeoutMs: 15_000, intervalMs: 200 });
}

describe("readiness", { timeout: 240_000 }, () => {
  let upstream: UpstreamProcess;

  before(async () => {
    upstream = await startUpstreamProcess();
  });

  after(async () => {
    await upstream?.close();
  });

  const headerAuth = { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } };

  test("ready when the record store and the SQLite quota store answer", async () => {
    const gateway = await startGateway({
      config: { server: { auth: headerAuth, quota: { kvstore: { type: "sqlite", db_path: "./q.db" } } }, upstream: { url: upstream.url } },
    });
    try {
      const r = await ready(gateway.url);
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, { status: "ready", checks: { record_store: "ok", quota_store: "ok" } });
    } finally {
      await gateway.close();
    }
  });

  test("/ready flips to 503 naming the quota store when Redis stops, and back when it returns; /health stays 200", async (t) => {
    const redis = await throwawayRedisOrSkip(t);
    if (!redis) return;
    await redis.start();
    const gateway = await startGateway({
      config: { server: { auth: headerAuth, quota: { kvstore: { type: "redis", url: redis.url }, failure_mode: "open" } }, upstream: { url: upstream.url } },
    });
    try {
      assert.equal((await readyUntil(gateway.url, (r) => r.status === 200)).body.checks.quota_store, "ok");
      await redis.stop();
      const down = await readyUntil(gateway.url, (r) => r.status === 503);
      assert.deepEqual(down.body.failing, ["quota_store"]);
      assert.equal(down.body.status, "not ready");
      assert.equal(down.body.checks.record_store, "ok");
      assert.equal((await fetch(`${gateway.url}/health`)).status, 200);
      await redis.start();
      await readyUntil(gateway.url, (r) => r.status === 200);
    } finally {
      await gateway.close();
      await redis.stop();
    }
  });

  test("not ready until the JWKS has been loaded; ready once the identity provider answers", async () => {
    const idp = await startOidc();
    await idp.stop();
    const gateway = await startGateway({
      config: {
        server: {
          auth: {
            provider_config: {
              type: "oauth2_token",
              jwks: { uri: idp.jwksUri, refresh_cooldown_ms: 100 },
              issuer: idp.issuer,
            },
          },
        },
        upstream: { url: upstream.url },
      },
    });
    try {
      const down = await ready(gateway.url);
      assert.equal(down.status, 503);
      assert.deepEqual(down.body.failing, ["identity_provider"]);
      assert.equal(down.body.checks.identity_provider, "unreachable");
      await idp.restart();
      const up = await readyUntil(gateway.url, (r) => r.status === 200);
      assert.equal(up.body.checks.identity_provider, "ok");

      // The same token until four requests passed. A single process passes at once (/ready loaded its keys); with
      // TOLLGATE_TEST_WORKERS=2 the other worker loads its own key set, and answers 503 until its next fetch is
      // allowed (refresh_cooldown_ms after the attempt that failed while the provider was down).
      const token = await idp.token();
      let passed = 0;
      const deadline = Date.now() + 10_000;
      while (passed < 4) {
        const res = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${token}` } });
        if (res.status === 200) passed++;
        else assert.equal(res.status, 503, "only keys not loaded yet may refuse the token");
        if (Date.now() > deadline) assert.fail(`only ${passed} requests passed in 10 s`);
      }
      const metrics = parsePrometheus(await (await fetch(`${gateway.url}/metrics`)).text());
      const misses = metrics.value("tollgate_cache_lookups_total", { cache: "verified_token", result: "miss" });
      const hits = metrics.value("tollgate_cache_lookups_total", { cache: "verified_token", result: "hit" });
      // Verified once per process, then cache hits.
      assert.ok(misses >= 1 && hits >= 2, `misses ${misses}, hits ${hits}`);
      assert.ok(metrics.value("tollgate_identity_provider_requests_total", { service: "jwks" }) >= 2);
      assert.ok(metrics.value("tollgate_identity_provider_errors_total", { service: "jwks" }) >= 1, "the fetch while the provider was down");
      assert.ok(metrics.value("tollgate_authentication_duration_seconds_count", { provider: "oauth2_token", outcome: "ok" }) >= 4);
    } finally {
      await gateway.close();
      await idp.close();
    }
  });

  test("a custom endpoint that cannot be reached makes the gateway not ready; a reachable one makes it ready", async () => {
    const port = await closedPort();
    const unreachable = await startGateway({
      config: { server: { auth: { provider_config: { type: "custom", endpoint: `http://127.0.0.1:${port}/validate`, timeout_ms: 1000 } } }, upstream: { url: upstream.url } },
    });
    try {
      const r = await ready(unreachable.url);
      assert.equal(r.status, 503);
      assert.deepEqual(r.body.failing, ["identity_provider"]);
      assert.equal(r.body.checks.identity_provider, "unreachable");
      // The endpoint URL, which may carry a secret path, is not shown.
      assert.ok(!JSON.stringify(r.body).includes(String(port)));
    } finally {
      await unreachable.close();
    }
    const auth = await startCustomAuth();
    const reachable = await startGateway({
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url } } }, upstream: { url: upstream.url } },
    });
    try {
      assert.equal((await ready(reachable.url)).status, 200);
    } finally {
      await reachable.close();
      await auth.close();
    }
  });
});
