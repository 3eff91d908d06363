import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { assertNotForwarded, newTag } from "../support/forwarded.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The console's files are served by the gateway from dist/console, without
// credentials and with a strict Content-Security-Policy; with
// server.admin.enabled: false, /admin/ and /console/ are 404 and still
// never forwarded.

describe("the console's files and the admin switch", { timeout: 60_000 }, () => {
  let upstream: UpstreamProcess;
  before(async () => {
    upstream = await startUpstreamProcess();
  });
  after(async () => upstream?.close());

  const config = (admin: Record<string, unknown>, unlisted = "deny") => ({
    server: { auth: { provider_config: { type: "api_key" } }, admin, resources: { unlisted } },
    upstream: { url: upstream.url },
    storage: { type: "sqlite", db_path: "./tollgate.db" },
  });

  test("the page, its script and stylesheet are served without credentials; /console redirects to /console/", async () => {
    const gateway = await startGateway({ config: config({}) });
    try {
      const redirect = await fetch(`${gateway.url}/console`, { redirect: "manual" });
      assert.equal(redirect.status, 301);
      assert.equal(redirect.headers.get("location"), "/console/");
      const page = await fetch(`${gateway.url}/console/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
      assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self'/);
      assert.match(page.headers.get("content-security-policy") ?? "", /frame-ancestors 'none'/);
      assert.equal(page.headers.get("set-cookie"), null);
      const html = await page.text();
      // Nothing from elsewhere: every script and stylesheet is the gateway's own.
      assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//);
      for (const asset of ["app.js", "style.css"]) {
        assert.match(html, new RegExp(`"${asset.replace(".", "\\.")}"`));
        const res = await fetch(`${gateway.url}/console/${asset}`);
        assert.equal(res.status, 200, asset);
        assert.doesNotMatch(await res.text(), /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, `${asset} names no other host`);
      }
      assert.equal((await fetch(`${gateway.url}/console/nothing.js`)).status, 404);
      assert.equal((await fetch(`${gateway.url}/console/`, { method: "POST" })).status, 405);
    } finally {
      await gateway.close();
    }
  });

  test("with unlisted: allow, every spelling of /console/ and /admin/ is still the gateway's, never forwarded", async () => {
    const gateway = await startGateway({ config: config({}, "allow"), args: ["--admin-key-file", "admin.key"] });
    const adminKey = readFileSync(join(gateway.dir, "admin.key"), "utf8").trim();
    try {
      const { tag, headers } = newTag();
      // Without a credential the pipeline would answer 401: a 200 page is the console's own answer.
      for (const path of ["/CONSOLE/", "/%63onsole/app.js", "/v1/../console/style.css", "//console//"]) {
        const res = await fetch(`${gateway.url}${path}`, { headers });
        assert.equal(res.status, 200, path);
        assert.match(res.headers.get("content-security-policy") ?? "", /default-src 'none'/, path);
        await res.arrayBuffer();
      }
      for (const path of ["/ADMIN/v1/config", "/%61dmin/v1/config", "/Admin/V1/config", "/v1/%2E%2E/admin/v1/config"]) {
        const res = await fetch(`${gateway.url}${path}`, { headers: { ...headers, authorization: `Bearer ${adminKey}` } });
        assert.equal(res.status, 200, path);
        assert.equal(((await res.json()) as { server: { admin: { enabled: boolean } } }).server.admin.enabled, true, path);
      }
      await assertNotForwarded(upstream, tag);
    } finally {
      await gateway.close();
    }
  });

  for (const unlisted of ["deny", "allow"]) {
    test(`server.admin.enabled: false (unlisted: ${unlisted}): /admin/ and /console/ are 404 and never forwarded`, async () => {
      const gateway = await startGateway({ config: config({ enabled: false }, unlisted), args: ["--admin-key-file", "admin.key"] });
      try {
        const { tag, headers } = newTag();
        for (const path of ["/admin/v1/keys", "/admin/v1/openapi.json", "/console/", "/console", "/Console/app.js", "/admin"]) {
          const res = await fetch(`${gateway.url}${path}`, { headers, redirect: "manual" });
          assert.equal(res.status, 404, path);
          await res.arrayBuffer();
        }
        await assertNotForwarded(upstream, tag);
      } finally {
        await gateway.close();
      }
    });
  }
});
