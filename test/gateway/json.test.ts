import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { JsonTooDeepError } from "../../src/core/errors.js";
import { MAX_JSON_DEPTH, memberValue, nestingExceeds, parseJsonWithin, scanJson } from "../../src/gateway/json.js";

const scan = (text: string) => scanJson(Buffer.from(text, "utf8"));

describe("scanJson", () => {
  test("accepts exactly what JSON.parse accepts", () => {
    const cases = [
      "{}", "[]", "0", "-0", "1.5e-3", "1E+2", '"a"', "true", "false", "null", ' \n\t\r{"a" : [1, {"b": null}] } ',
      '{"a":"\\u00e9\\n\\"\\\\\\/"}', '{"a":1,"a":2}', '["é", "😀"]',
      "", "{", "}", "[1,]", "{,}", '{"a"}', '{"a":}', '{"a":1,}', "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "True",
      '"\\x"', '"\\u12G4"', '"a\nb"', "{} {}", "[1 2]", '{"a" 1}', "{'a':1}", "\uFEFF{}", "[}", "{]", "NaN", "Infinity",
    ];
    for (const text of cases) {
      let parsed = true;
      try {
        JSON.parse(text);
      } catch {
        parsed = false;
      }
      assert.equal(scan(text).valid, parsed, JSON.stringify(text));
    }
  });

  test("finds each top-level member by its decoded name, the last of duplicates", () => {
    const text = '{"model": "m1", "nested": {"model": "inner"}, "mod\\u0065l": "m2", "list": [1, {"model": "x"}], "n": -1.5}';
    const bytes = Buffer.from(text);
    const result = scanJson(bytes);
    assert.equal(memberValue(bytes, result, "model"), "m2");
    assert.deepEqual(memberValue(bytes, result, "nested"), { model: "inner" });
    assert.deepEqual(memberValue(bytes, result, "list"), [1, { model: "x" }]);
    assert.equal(memberValue(bytes, result, "n"), -1.5);
    assert.equal(memberValue(bytes, result, "absent"), undefined);
    assert.equal(scan("[1]").members, undefined);
  });

  test("a member's value is what JSON.parse reads: literals, plain and escaped strings, long strings, numbers", () => {
    const values = [true, false, null, "demo-small", "", "é ü €", 'a"b', "a\\b", "tab\there", "line\nend", "x".repeat(300), 0, -1.5, 1e21, { include_usage: true }, [true]];
    for (const value of values) {
      for (const text of [JSON.stringify({ v: value }), `{ "v" : ${JSON.stringify(value)} , "w": 1}`, `{"v":${JSON.stringify(value).replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)}}`]) {
        const bytes = Buffer.from(text);
        assert.deepEqual(memberValue(bytes, scanJson(bytes), "v"), JSON.parse(text).v, text);
      }
    }
  });

  test("refuses nesting past the bound, whatever follows, and ignores brackets inside strings", () => {
    assert.equal(scan("[".repeat(MAX_JSON_DEPTH) + "]".repeat(MAX_JSON_DEPTH)).valid, true);
    assert.throws(() => scan("[".repeat(MAX_JSON_DEPTH + 1)), JsonTooDeepError);
    assert.throws(() => scan('{"a":' + "[".repeat(10_000)), (err: JsonTooDeepError) => err.status === 400 && err.code === "json_too_deep");
    assert.equal(scan(`{"a":"${"[".repeat(10_000)}"}`).valid, true);
  });
});

describe("upstream JSON", () => {
  test("parseJsonWithin parses ordinary JSON and gives up on deep or invalid text", () => {
    assert.deepEqual(parseJsonWithin('{"usage":{"total_tokens":3}}'), { usage: { total_tokens: 3 } });
    assert.equal(parseJsonWithin("{nope"), undefined);
    assert.equal(parseJsonWithin("[".repeat(10_000) + "]".repeat(10_000)), undefined);
    assert.equal(nestingExceeds(`["${"[".repeat(500)}\\""]`, 2), false);
  });
});
