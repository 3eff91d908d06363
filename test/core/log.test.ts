import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { REDACT_PATHS } from "../../src/core/log.js";
import { captureLog } from "../support/log.js";

// Every redaction path of the logger, exercised: an object holding a known
// secret exactly where the path points is logged, and the whole output is
// searched for the secret. A path that pino reads differently from what its
// author meant (`*.token` is one level deep, `a['b-c']` needs the brackets)
// shows up here as a leak.

/** The keys of `path` (`req.headers['x-api-key']` -> req, headers, x-api-key); `*` stands for any key. */
function keysOf(path: string): string[] {
  const keys: string[] = [];
  for (const match of path.matchAll(/([^.[\]]+)|\[(['"])(.*?)\2\]/g)) keys.push(match[1] ?? match[3]!);
  return keys;
}

/** An object with `secret` at `path`, the wildcard replaced by `wildcard`. */
function objectAt(path: string, secret: string, wildcard: string): Record<string, unknown> {
  const keys = keysOf(path).map((k) => (k === "*" ? wildcard : k));
  let value: unknown = secret;
  for (const key of keys.reverse()) value = { [key]: value };
  return value as Record<string, unknown>;
}

describe("log redaction", () => {
  test("the path parser reads the forms REDACT_PATHS uses", () => {
    assert.deepEqual(keysOf("req.headers['x-api-key']"), ["req", "headers", "x-api-key"]);
    assert.deepEqual(keysOf("*['set-cookie']"), ["*", "set-cookie"]);
    assert.deepEqual(keysOf("*.token"), ["*", "token"]);
    assert.deepEqual(objectAt("*.token", "s", "err"), { err: { token: "s" } });
  });

  for (const path of REDACT_PATHS) {
    test(`${path} is redacted`, () => {
      // Each wildcard is tried under a few names a log line really uses.
      for (const wildcard of ["headers", "err", "config", "body"]) {
        const secret = `secret-${path.replace(/\W/g, "_")}-${wildcard}-Zq81`;
        const { log, text } = captureLog("trace");
        log.warn(objectAt(path, secret, wildcard), "a line with a secret in it");
        const output = text();
        assert.match(output, /"msg":"a line with a secret in it"/);
        assert.ok(!output.includes(secret), `${path} (with * = ${wildcard}) leaked: ${output}`);
        assert.match(output, /\[redacted\]/);
        if (!path.includes("*")) break;
      }
    });
  }

  test("a child logger redacts the same paths", () => {
    const { log, text } = captureLog("trace");
    const secret = "child-secret-3kd9";
    log.child({ component: "jwks" }).info({ headers: { authorization: `Bearer ${secret}` }, token: secret, password: secret }, "child line");
    assert.match(text(), /"msg":"child line"/);
    assert.ok(!text().includes(secret), text());
  });
});
