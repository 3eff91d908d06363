import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { text } from "node:stream/consumers";
import { test } from "node:test";
import { meterUsage, usageTotal } from "../../src/gateway/usage.js";

async function run(chunks: string[], contentType: string, strip: boolean) {
  const recorded: number[] = [];
  const out = await text(meterUsage(Readable.from(chunks.map((c) => Buffer.from(c))), contentType, { stripUsageChunk: strip }, (n) => recorded.push(n)));
  return { out, recorded };
}

const content = (word: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: word } }], usage: null })}\n\n`;
const usageChunk = `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } })}\n\n`;

test("usage totals: total_tokens, prompt + completion, input + output", () => {
  assert.equal(usageTotal({ total_tokens: 9 }), 9);
  assert.equal(usageTotal({ prompt_tokens: 2, completion_tokens: 3 }), 5);
  assert.equal(usageTotal({ input_tokens: 4, output_tokens: 1 }), 5);
  assert.equal(usageTotal(null), undefined);
});

test("SSE: the usage chunk is counted and removed, even split across reads", async () => {
  const stream = content("a") + content("b") + usageChunk + "data: [DONE]\n\n";
  const pieces = [];
  for (let i = 0; i < stream.length; i += 7) pieces.push(stream.slice(i, i + 7));
  const { out, recorded } = await run(pieces, "text/event-stream", true);
  assert.equal(out, content("a") + content("b") + "data: [DONE]\n\n");
  assert.deepEqual(recorded, [7]);
});

test("SSE: a client that asked for usage keeps its chunk", async () => {
  const stream = content("a") + usageChunk + "data: [DONE]\n\n";
  const { out, recorded } = await run([stream], "text/event-stream; charset=utf-8", false);
  assert.equal(out, stream);
  assert.deepEqual(recorded, [7]);
});

test("SSE with CRLF line ends and the Responses API's completed event", async () => {
  const event = `event: response.completed\r\ndata: ${JSON.stringify({ type: "response.completed", response: { usage: { input_tokens: 5, output_tokens: 6, total_tokens: 11 } } })}\r\n\r\n`;
  const { out, recorded } = await run([event], "text/event-stream", false);
  assert.equal(out, event);
  assert.deepEqual(recorded, [11]);
});

test("JSON: counted from usage, passed through byte for byte", async () => {
  const body = JSON.stringify({ object: "list", data: [], usage: { prompt_tokens: 8, total_tokens: 8 } });
  const { out, recorded } = await run([body.slice(0, 10), body.slice(10)], "application/json", false);
  assert.equal(out, body);
  assert.deepEqual(recorded, [8]);
});
