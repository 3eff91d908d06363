import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MAX_CREDENTIAL_BYTES, parseBearer } from "../../src/core/bearer.js";
import { AuthError } from "../../src/core/errors.js";

const TOKEN = "abc.DEF-123_~+/xyz==";

/**
 * Asserts a 401 invalid_request with the reference's exact message, whose
 * challenge's error_description explains `reason`, and which never echoes `secret`.
 */
function assertRefused(header: string | readonly string[], reason: RegExp, secret = TOKEN, maxBytes?: number): void {
  assert.throws(
    () => parseBearer(header, maxBytes),
    (err: unknown) => {
      assert.ok(err instanceof AuthError, `expected an AuthError, got ${String(err)}`);
      assert.equal(err.status, 401);
      assert.equal(err.code, "invalid_request");
      assert.equal(err.message, "Invalid Authorization header format");
      const challenge = err.headers["www-authenticate"] ?? "";
      assert.match(challenge, /^Bearer realm="tollgate", error="invalid_request", error_description="[^"\\]+"$/);
      assert.match(challenge, reason);
      assert.match(err.detail ?? "", reason);
      assert.ok(!challenge.includes(secret), `the challenge echoes the credential: ${challenge}`);
      return true;
    },
  );
}

describe("parseBearer", () => {
  test("returns the token of a well-formed bearer header", () => {
    assert.equal(parseBearer(`Bearer ${TOKEN}`), TOKEN);
  });

  for (const scheme of ["bearer", "BEARER", "BeArEr"]) {
    test(`the scheme is case-insensitive: ${scheme}`, () => {
      assert.equal(parseBearer(`${scheme} ${TOKEN}`), TOKEN);
    });
  }

  test("extra spaces and tabs around and after the scheme are tolerated", () => {
    assert.equal(parseBearer(`  Bearer \t  ${TOKEN}  `), TOKEN);
  });

  test("no header means no credential", () => {
    assert.equal(parseBearer(undefined), undefined);
    assert.equal(parseBearer([]), undefined);
  });

  test("one empty header means no credential, as in the reference", () => {
    assert.equal(parseBearer(""), undefined);
    assert.equal(parseBearer("   "), undefined);
    assert.equal(parseBearer([""]), undefined);
  });

  test("a single header given as a one-element list is parsed", () => {
    assert.equal(parseBearer([`Bearer ${TOKEN}`]), TOKEN);
  });

  test("'Bearer' without a token is refused", () => {
    assertRefused("Bearer", /empty bearer token/);
    assertRefused("Bearer    ", /empty bearer token/);
  });

  test("another scheme is refused", () => {
    assertRefused(`Basic ${Buffer.from("user:pw").toString("base64")}`, /expected 'Bearer <token>'/);
    assertRefused(`Token ${TOKEN}`, /expected 'Bearer <token>'/);
  });

  test("a token without a scheme is refused", () => {
    assertRefused(TOKEN, /expected 'Bearer <token>'/);
  });

  test("a scheme glued to the token is refused", () => {
    assertRefused(`Bearer:${TOKEN}`, /expected 'Bearer <token>'/);
  });

  test("two credentials in one header are refused", () => {
    assertRefused(`Bearer ${TOKEN} other`, /exactly one bearer token/);
    assertRefused(`Bearer ${TOKEN},other`, /exactly one bearer token/);
    assertRefused(`Bearer ${TOKEN}, Bearer other`, /exactly one bearer token/);
  });

  test("two Authorization headers are refused, even when identical", () => {
    assertRefused([`Bearer ${TOKEN}`, `Bearer ${TOKEN}`], /exactly one Authorization header/);
    assertRefused([`Bearer ${TOKEN}`, ""], /exactly one Authorization header/);
  });

  test("a token longer than the limit is refused", () => {
    const long = "a".repeat(MAX_CREDENTIAL_BYTES + 1);
    assertRefused(`Bearer ${long}`, new RegExp(`longer than ${MAX_CREDENTIAL_BYTES} bytes`), long);
  });

  test("a token exactly at the limit is accepted", () => {
    const atLimit = "a".repeat(MAX_CREDENTIAL_BYTES);
    assert.equal(parseBearer(`Bearer ${atLimit}`), atLimit);
  });

  test("the limit can be lowered by the caller", () => {
    assertRefused("Bearer abcdef", /longer than 4 bytes/, "abcdef", 4);
    assert.equal(parseBearer("Bearer abcd", 4), "abcd");
  });

  for (const [name, token] of [
    ["a quote", 'abc"def'],
    ["a colon", "abc:def"],
    ["'=' before the end", "abc=def"],
    ["non-ASCII", "abcé"],
    ["a semicolon", "abc;def"],
  ] as const) {
    test(`a token with ${name} is refused as not RFC 6750`, () => {
      assertRefused(`Bearer ${token}`, /characters not allowed by RFC 6750/, token);
    });
  }

  test("padding '=' at the end of a token is allowed", () => {
    assert.equal(parseBearer("Bearer abc=="), "abc==");
  });
});
