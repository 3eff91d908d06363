import assert from "node:assert/strict";
import { test } from "node:test";
import { maskUrlPassword, redactConfig } from "../../src/admin/redact.js";

test("every secret field becomes *** wherever it is, and nothing else changes", () => {
  const config = {
    upstream: { url: "http://127.0.0.1:8000", api_key: "sk-upstream" },
    server: {
      auth: { provider_config: { type: "oauth2_token", introspection: { url: "https://idp/introspect", client_id: "gw", client_secret: "cs-1" } } },
      quota: { limits: [{ tokens: 1000, period: "day" }] },
    },
    upstreams: [{ name: "a", url: "http://a", api_key: "sk-a" }, { name: "b", url: "http://b" }],
    extra: { token: "t-1", password: "p-1", Password: "p-2", empty_api_key: "", api_key: null },
  };
  assert.deepEqual(redactConfig(config), {
    upstream: { url: "http://127.0.0.1:8000", api_key: "***" },
    server: {
      auth: { provider_config: { type: "oauth2_token", introspection: { url: "https://idp/introspect", client_id: "gw", client_secret: "***" } } },
      quota: { limits: [{ tokens: 1000, period: "day" }] },
    },
    upstreams: [{ name: "a", url: "http://a", api_key: "***" }, { name: "b", url: "http://b" }],
    extra: { token: "***", password: "***", Password: "***", empty_api_key: "", api_key: null },
  });
});

test("the password of a URL is masked, the user, host and path kept", () => {
  assert.equal(maskUrlPassword("postgres://u:s3cret@db.example:5432/tollgate"), "postgres://u:***@db.example:5432/tollgate");
  assert.equal(maskUrlPassword("redis://:s3cret@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
  assert.equal(maskUrlPassword("postgresql://u:p@ss@h/db?sslmode=require"), "postgresql://u:***@h/db?sslmode=require");
  assert.equal(maskUrlPassword("postgres://u@h/db"), "postgres://u@h/db");
  assert.equal(maskUrlPassword("http://h:8080/a:b@c"), "http://h:8080/a:b@c");
  assert.equal(maskUrlPassword("not a url: x@y"), "not a url: x@y");
  assert.deepEqual(redactConfig({ storage: { type: "postgres", url: "postgres://u:pw@h/db" } }), { storage: { type: "postgres", url: "postgres://u:***@h/db" } });
});
