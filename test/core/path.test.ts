import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { BadRequestError } from "../../src/core/errors.js";
import { canonicalPath, canonicalTarget } from "../../src/core/path.js";

describe("canonicalTarget", () => {
  const table: Array<[target: string, path: string, query?: string]> = [
    ["/", "/"],
    ["/v1/models", "/v1/models"],
    ["/v1/%6Dodels", "/v1/models"],
    ["/v1/%7euser/%41%5a%30%2D%2E%5F", "/v1/~user/AZ0-._"],
    ["/v1/files/a%2cb", "/v1/files/a%2Cb"],
    ["/v1/files/a%20b", "/v1/files/a%20b"],
    ["/v1/files/%25", "/v1/files/%25"],
    ["/v1/files/%e2%82%ac", "/v1/files/%E2%82%AC"],
    ["/v1//models", "/v1/models"],
    ["//v1///models//", "/v1/models"],
    ["/v1/./models", "/v1/models"],
    ["/v1/models/.", "/v1/models"],
    ["/v1/x/../models", "/v1/models"],
    ["/v1/x/y/../../models", "/v1/models"],
    ["/v1/%2e%2E/v1/health", "/v1/health"],
    ["/v1/%2e/health", "/v1/health"],
    ["/v1/models/", "/v1/models"],
    ["/health/", "/health"],
    ["/x/health", "/x/health"],
    ["/./", "/"],
    ["/a/..", "/"],
    ["/v1/a:b@c!$&'()*+,=", "/v1/a:b@c!$&'()*+,="],
    ["/v1/models?a=;b", "/v1/models", "a=;b"],
    ["/v1/...", "/v1/..."],
    ["/v1/models?limit=2&after=x", "/v1/models", "limit=2&after=x"],
    ["/v1/models/?", "/v1/models", ""],
    ["/v1/models?a=%2F&b=..", "/v1/models", "a=%2F&b=.."],
    ["/v1/models?x?y", "/v1/models", "x?y"],
  ];
  for (const [target, path, query = ""] of table) {
    test(`${JSON.stringify(target)} is ${JSON.stringify(path)}${query ? ` with query ${JSON.stringify(query)}` : ""}`, () => {
      assert.deepEqual(canonicalTarget(target), { path, query });
    });
  }

  const refused: Array<[target: string, reason: RegExp]> = [
    ["/..", /'\.\.' above the root/],
    ["/v1/../../etc/passwd", /'\.\.' above the root/],
    ["/%2e%2e/x", /'\.\.' above the root/],
    ["/v1/files%2Fsecret", /encoded '\/', '\\' or NUL/],
    ["/v1/files%2fsecret", /encoded '\/', '\\' or NUL/],
    ["/v1/files%5Csecret", /encoded '\/', '\\' or NUL/],
    ["/v1/files%5csecret", /encoded '\/', '\\' or NUL/],
    ["/v1/files%00", /encoded '\/', '\\' or NUL/],
    // `;` is a path parameter to Tomcat and Spring (`..;/` walks up there): refused raw or encoded.
    ["/v1/models;x=1", /';' is not allowed/],
    ["/v1/models/..;/fine_tuning/jobs", /';' is not allowed/],
    ["/v1;a/models", /';' is not allowed/],
    ["/v1/files/file-1%3B", /';' is not allowed/],
    ["/v1/files/file-1%3bx", /';' is not allowed/],
    ["/v1/%", /malformed percent-encoding/],
    ["/v1/%4", /malformed percent-encoding/],
    ["/v1/%zz", /malformed percent-encoding/],
    ["/v1/%+1", /malformed percent-encoding/],
    ["/v1/modèles", /character not allowed/],
    ["/v1/files\\secret", /character not allowed/],
    ["/v1/a b", /character not allowed/],
    ["/v1/a#frag", /character not allowed/],
    ["/v1/a\u0000", /character not allowed/],
    ["http://a/b", /expected an absolute path/],
    ["*", /expected an absolute path/],
    ["", /expected an absolute path/],
    ["v1/models", /expected an absolute path/],
    ["?a=1", /expected an absolute path/],
  ];
  for (const [target, reason] of refused) {
    test(`${JSON.stringify(target)} is refused with a 400 invalid_path`, () => {
      assert.throws(
        () => canonicalTarget(target),
        (err: unknown) =>
          err instanceof BadRequestError &&
          err.status === 400 &&
          err.code === "invalid_path" &&
          err.message.startsWith("Invalid request path: ") &&
          reason.test(err.message),
      );
    });
  }

  test("canonicalisation is idempotent", () => {
    for (const [target] of table) {
      const once = canonicalTarget(target).path;
      assert.equal(canonicalTarget(once).path, once);
    }
  });
});

describe("canonicalPath", () => {
  test("returns the canonical path of a configured path", () => {
    assert.equal(canonicalPath("/v1//health/"), "/v1/health");
  });

  test("throws on a path that cannot be canonicalised", () => {
    assert.throws(() => canonicalPath("health"), BadRequestError);
  });
});
