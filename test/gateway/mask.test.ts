import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { test } from "node:test";
import { brotliCompressSync, deflateSync } from "node:zlib";
import { maskedAnswer } from "../../src/gateway/mask.js";

const SECRET = "sk-upstream-9xQ";
const STARS = "*".repeat(SECRET.length);

async function text(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

test("every occurrence is masked, also when the chunks cut it anywhere, byte by byte", async () => {
  const input = `${SECRET} at the start, twice ${SECRET}${SECRET}, and at the end ${SECRET}`;
  const bytes = [...Buffer.from(input)].map((b) => Buffer.from([b]));
  const masked = maskedAnswer({ "content-type": "application/json" }, Readable.from(bytes), SECRET)!;
  assert.equal(await text(masked.body), input.split(SECRET).join(STARS));
});

test("a body shorter than the secret, and one without it, pass unchanged", async () => {
  for (const input of ["sk-", "nothing to hide here, not even sk-upstream-9x"]) {
    assert.equal(await text(maskedAnswer({}, Readable.from([Buffer.from(input)]), SECRET)!.body), input);
  }
});

test("deflate and brotli answers are decompressed and sent without their encoding and length", async () => {
  const input = `{"error":{"message":"bad key Bearer ${SECRET}"}}`;
  for (const [encoding, compressed] of [["deflate", deflateSync(input)], ["br", brotliCompressSync(input)]] as const) {
    const masked = maskedAnswer({ "content-encoding": encoding, "content-length": String(compressed.length) }, Readable.from([compressed]), SECRET)!;
    assert.deepEqual(masked.headers, {});
    assert.equal(await text(masked.body), input.replace(SECRET, STARS));
  }
});

test("an encoding that cannot be decoded gives undefined; header values are masked", () => {
  assert.equal(maskedAnswer({ "content-encoding": "zstd" }, Readable.from([]), SECRET), undefined);
  assert.equal(maskedAnswer({ "content-encoding": "gzip, br" }, Readable.from([]), SECRET), undefined);
  const masked = maskedAnswer({ "x-debug": [`got ${SECRET}`, "other"] }, Readable.from([]), SECRET)!;
  assert.deepEqual(masked.headers, { "x-debug": [`got ${STARS}`, "other"] });
});
