import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { AuthRequest } from "../../../src/core/providers/types.js";
import {
  createUpstreamHeaderProvider,
  MAX_PRINCIPAL_LENGTH,
  type UpstreamHeaderProviderConfig,
} from "../../../src/core/providers/upstream-header.js";
import { refusal } from "../../support/refusal.js";

function provider(overrides: Partial<UpstreamHeaderProviderConfig> = {}) {
  return createUpstreamHeaderProvider({
    type: "upstream_header",
    principal_header: "x-user",
    attributes_header: "x-user-attributes",
    ...overrides,
  });
}

/** A request from a peer the default `trusted_proxies` (loopback) believes, unless another address is given. */
function request(headers: AuthRequest["headers"], remoteAddress = "127.0.0.1"): AuthRequest {
  return { token: undefined, path: "/v1/models", query: "", headers, remoteAddress };
}

describe("upstream_header provider", () => {
  test("reads credentials from headers, not from a bearer token", () => {
    const p = provider();
    assert.equal(p.type, "upstream_header");
    assert.equal(p.credential, "headers");
  });

  test("the principal header becomes the principal, trimmed", async () => {
    const user = await provider().authenticate(request({ "x-user": "  alice  " }));
    assert.equal(user.principal, "alice");
    assert.deepEqual(user.attributes, {});
  });

  test("the attributes header's JSON object of string lists becomes the attributes", async () => {
    const user = await provider().authenticate(
      request({ "x-user": "alice", "x-user-attributes": '{"roles": ["admin"], "teams": ["ml", "nlp"]}' }),
    );
    assert.deepEqual(user.attributes, { roles: ["admin"], teams: ["ml", "nlp"] });
  });

  test("configured header names are matched case-insensitively", async () => {
    const p = createUpstreamHeaderProvider({ type: "upstream_header", principal_header: "X-Forwarded-User" });
    const user = await p.authenticate(request({ "x-forwarded-user": "bob" }));
    assert.equal(user.principal, "bob");
  });

  test("a missing principal header is a 401 naming the header, without an error code in the challenge", async () => {
    const err = await refusal(provider().authenticate(request({})));
    assert.equal(err.status, 401);
    assert.equal(err.code, "missing_credential");
    assert.equal(err.message, "Authentication required. Expected the x-user header from the authenticating proxy");
    assert.equal(err.headers["www-authenticate"], 'Bearer realm="tollgate"');
  });

  test("the missing-credential message is also the provider's authRequiredMessage", () => {
    assert.equal(provider().authRequiredMessage, "Authentication required. Expected the x-user header from the authenticating proxy");
  });

  for (const [name, value] of [
    ["empty", ""],
    ["only spaces", "   "],
    ["longer than the limit", "a".repeat(MAX_PRINCIPAL_LENGTH + 1)],
    ["sent twice", ["alice", "mallory"]],
  ] as Array<[string, string | string[]]>) {
    test(`a principal header that is ${name} is a 401`, async () => {
      const err = await refusal(provider().authenticate(request({ "x-user": value })));
      assert.equal(err.status, 401);
      assert.equal(err.code, "missing_credential");
    });
  }

  test("a principal exactly at the length limit is accepted", async () => {
    const user = await provider().authenticate(request({ "x-user": "a".repeat(MAX_PRINCIPAL_LENGTH) }));
    assert.equal(user.principal.length, MAX_PRINCIPAL_LENGTH);
  });

  test("without an attributes header the user has no attributes", async () => {
    const user = await provider().authenticate(request({ "x-user": "alice" }));
    assert.deepEqual(user.attributes, {});
  });

  for (const [name, value] of [
    ["not JSON", "roles=admin"],
    ["a JSON array", '["admin"]'],
    ["a JSON string", '"admin"'],
    ["null", "null"],
    ["a list holding a number", '{"roles": ["admin", 1]}'],
    ["a bare string value", '{"roles": "admin"}'],
    ["a __proto__ entry", '{"__proto__": ["admin"]}'],
    ["sent twice", ['{"roles": ["user"]}', '{"roles": ["admin"]}']],
  ] as Array<[string, string | string[]]>) {
    test(`an attributes header that is ${name} is a 401 saying what was expected`, async () => {
      const err = await refusal(provider().authenticate(request({ "x-user": "alice", "x-user-attributes": value })));
      assert.equal(err.status, 401);
      assert.equal(err.code, "invalid_token");
      assert.equal(err.message, "Invalid x-user-attributes header: expected a JSON object of string lists");
    });
  }

  test("the attributes header is ignored when none is configured", async () => {
    const p = createUpstreamHeaderProvider({ type: "upstream_header", principal_header: "x-user" });
    const user = await p.authenticate(request({ "x-user": "alice", "x-user-attributes": '{"roles": ["admin"]}' }));
    assert.deepEqual(user.attributes, {});
  });

  test("close() resolves", async () => {
    await provider().close();
  });
});

describe("upstream_header trusted_proxies", () => {
  const trusted = provider({ trusted_proxies: ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"] });

  for (const address of ["10.1.2.3", "10.255.255.255", "192.168.1.7", "::ffff:10.9.9.9", "::ffff:192.168.1.7", "fd12:3456::1", "::1"]) {
    test(`a request from ${address} is trusted`, async () => {
      const user = await trusted.authenticate(request({ "x-user": "alice" }, address));
      assert.equal(user.principal, "alice");
    });
  }

  for (const address of ["11.0.0.1", "192.168.1.8", "::ffff:11.0.0.1", "fe80::1", "2001:db8::1"]) {
    test(`a request from ${address} is refused with 401`, async () => {
      const err = await refusal(trusted.authenticate(request({ "x-user": "alice" }, address)));
      assert.equal(err.status, 401);
      assert.equal(err.code, "invalid_token");
      assert.equal(err.message, "Identity headers are only accepted from a trusted proxy");
    });
  }

  test("a request whose peer address is unknown is refused", async () => {
    const err = await refusal(trusted.authenticate(request({ "x-user": "alice" }, "")));
    assert.equal(err.message, "Identity headers are only accepted from a trusted proxy");
  });

  test("an untrusted peer is refused even when it sends no identity headers", async () => {
    const err = await refusal(trusted.authenticate(request({}, "11.0.0.1")));
    assert.equal(err.message, "Identity headers are only accepted from a trusted proxy");
  });

  test("an IPv4-mapped entry trusts the plain IPv4 peer too", async () => {
    const p = provider({ trusted_proxies: ["::ffff:127.0.0.1"] });
    assert.equal((await p.authenticate(request({ "x-user": "a" }, "127.0.0.1"))).principal, "a");
    assert.equal((await p.authenticate(request({ "x-user": "a" }, "::ffff:127.0.0.1"))).principal, "a");
  });

  test("an IPv4-mapped CIDR is read in IPv6 prefix bits", async () => {
    const p = provider({ trusted_proxies: ["::ffff:10.0.0.0/104"] });
    assert.equal((await p.authenticate(request({ "x-user": "a" }, "10.200.0.1"))).principal, "a");
    await refusal(p.authenticate(request({ "x-user": "a" }, "11.0.0.1")));
  });

  test("an empty trusted_proxies list trusts nobody", async () => {
    const err = await refusal(provider({ trusted_proxies: [] }).authenticate(request({ "x-user": "a" }, "127.0.0.1")));
    assert.equal(err.status, 401);
  });

  for (const address of ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"]) {
    test(`without trusted_proxies a loopback peer (${address}) may assert identity`, async () => {
      const user = await provider().authenticate(request({ "x-user": "alice" }, address));
      assert.equal(user.principal, "alice");
    });
  }

  for (const address of ["203.0.113.9", "10.1.2.3", "192.168.1.7", "fd00::1", "::ffff:10.1.2.3"]) {
    test(`without trusted_proxies a peer off the loopback interface (${address}) is refused with 401`, async () => {
      const err = await refusal(provider().authenticate(request({ "x-user": "alice" }, address)));
      assert.equal(err.status, 401);
      assert.equal(err.message, "Identity headers are only accepted from a trusted proxy");
    });
  }

  test("trusted_proxies naming every address believes every peer", async () => {
    const user = await provider({ trusted_proxies: ["0.0.0.0/0", "::/0"] }).authenticate(request({ "x-user": "alice" }, "203.0.113.9"));
    assert.equal(user.principal, "alice");
  });

  for (const entry of ["localhost", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "::1/129", "10.0.0/8", "1.2.3.4/8/9", "10.0.0.0/8a"]) {
    test(`the entry ${JSON.stringify(entry)} fails creation with an error naming it`, () => {
      assert.throws(
        () => provider({ trusted_proxies: [entry] }),
        (err: Error) => err.message.includes(JSON.stringify(entry)) && /not an IP address or CIDR/.test(err.message),
      );
    });
  }
});
