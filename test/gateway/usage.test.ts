import assert from "node:assert/strict";
import { once } from "node:events";
import http, { type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough, Readable, Writable } from "node:stream";
import { brotliCompressSync, brotliDecompressSync, createGunzip, createGzip, deflateSync, gunzipSync, gzipSync, inflateSync } from "node:zlib";
import { buffer } from "node:stream/consumers";
import { test } from "node:test";
import { request } from "undici";
import { scanJson } from "../../src/gateway/json.js";
import { drainSignal, meterUsage, meterUsageInto, prepareUsage, usageCount, usageTotal, type DrainBounds, type MeterOptions, type TokenCount } from "../../src/gateway/usage.js";

async function run(chunks: (string | Buffer)[], contentType: string, strip: boolean, more: Partial<MeterOptions> = {}) {
  const recorded: number[] = [];
  const body = Readable.from(chunks.map((c) => Buffer.from(c)));
  const bytes = await buffer(meterUsage(body, { contentType, contentEncoding: undefined, stripUsageChunk: strip, estimate: undefined, record: (n) => recorded.push(n.total), ...more }));
  // A decompressed copy is read to its end after the client's bytes (zlib works off the main thread).
  for (let waited = 0; recorded.length === 0 && waited < 1000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
  return { out: bytes.toString(), bytes, recorded };
}

const content = (word: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: word } }], usage: null })}\n\n`;
const usageChunk = `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } })}\n\n`;

test("usage totals: total_tokens, prompt + completion, input + output", () => {
  assert.equal(usageTotal({ total_tokens: 9 }), 9);
  assert.equal(usageTotal({ prompt_tokens: 2, completion_tokens: 3 }), 5);
  assert.equal(usageTotal({ input_tokens: 4, output_tokens: 1 }), 5);
  assert.equal(usageTotal(null), undefined);
});

test("prompt and completion tokens are told apart (what prices apply to), in JSON, in streams and in running totals", async () => {
  const split: TokenCount[] = [];
  const record = (n: TokenCount) => split.push(n);
  await run([JSON.stringify({ id: "x", usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } })], "application/json", false, { record });
  await run([usageChunk], "text/event-stream", false, { record });
  // A server reporting running totals on every chunk: each charge is what that chunk adds.
  const running = (p: number, c: number) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: {} }], usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c } })}\n\n`;
  await run([running(3, 1), running(3, 4)], "text/event-stream", false, { record });
  await run([JSON.stringify({ usage: { input_tokens: 6, output_tokens: 1, total_tokens: 7 } })], "application/json", false, { record });
  assert.deepEqual(split, [
    { total: 7, prompt: 5, completion: 2 },
    { total: 7, prompt: 3, completion: 4 },
    { total: 4, prompt: 3, completion: 1 },
    { total: 3, prompt: 0, completion: 3 },
    { total: 7, prompt: 6, completion: 1 },
  ]);
  assert.deepEqual(usageCount({ prompt_tokens: 4, total_tokens: 4 }), { total: 4, prompt: 4, completion: 0 });
});

test("SSE: the usage chunk is counted and removed, even split across reads", async () => {
  const stream = content("a") + content("b") + usageChunk + "data: [DONE]\n\n";
  const pieces = [];
  for (let i = 0; i < stream.length; i += 7) pieces.push(stream.slice(i, i + 7));
  const { out, recorded } = await run(pieces, "text/event-stream", true);
  assert.equal(out, content("a") + content("b") + "data: [DONE]\n\n");
  assert.deepEqual(recorded, [7]);
});

test("SSE: whole events pass untouched and are counted the same, however the stream is cut into reads", async () => {
  const plain = (word: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: word } }] })}\n\n`;
  const spaced = `data: {"choices":[{"index":0,"delta":{"content":"é"}}],"usage" :  null}\n\n`;
  const named = `event: message\nid: 7\n${plain("c")}`;
  const events = [plain("a"), content("b"), spaced, ": a comment\n\n", named, "\n", plain("ü€"), usageChunk, "data: [DONE]\n\n"];
  const expected = events.filter((e) => e !== usageChunk).join("");
  const whole = events.join("");
  const bytes = Buffer.from(whole);
  // One read per event (each passed on as it is), the whole stream in one read, 5-byte reads (every event
  // split, multi-byte characters among them), and whole events after a read that ended mid-event.
  const cut = [
    events.map((e) => Buffer.from(e)),
    [bytes],
    Array.from({ length: Math.ceil(bytes.length / 5) }, (_, i) => bytes.subarray(i * 5, i * 5 + 5)),
    [Buffer.from(events[0]!.slice(0, 9)), Buffer.from(events[0]!.slice(9) + events[1]), ...events.slice(2).map((e) => Buffer.from(e))],
  ];
  for (const reads of cut) {
    const { out, recorded } = await run(reads, "text/event-stream", true);
    assert.equal(out, expected, `${reads.length} reads`);
    assert.deepEqual(recorded, [7], `${reads.length} reads`);
    // Without a usage the estimate counts one token per data event (5 of them, [DONE], the comment and the stray line end not counted).
    const estimate = { promptTokens: 0, maxTokens: undefined };
    const noUsage = reads === cut[0] ? events.filter((e) => e !== usageChunk).map((e) => Buffer.from(e)) : [Buffer.from(expected)];
    assert.deepEqual((await run(noUsage, "text/event-stream", true, { estimate })).recorded, [5]);
  }
});

test("SSE: usage on content chunks is removed and charged by what each adds, alike in one read and in 5-byte reads", async () => {
  const withUsage = (word: string, total: number) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: word } }], usage: { total_tokens: total } })}\n\n`;
  const bare = (word: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: word } }] })}\n\n`;
  const events = [content("a"), withUsage("ü€", 3), "data: {\"note\":\"usage\"}\n\n", withUsage("c", 5), usageChunk, "data: [DONE]\n\n"];
  const expected = [content("a"), bare("ü€"), "data: {\"note\":\"usage\"}\n\n", bare("c"), "data: [DONE]\n\n"].join("");
  const bytes = Buffer.from(events.join(""));
  for (const reads of [[bytes], Array.from({ length: Math.ceil(bytes.length / 5) }, (_, i) => bytes.subarray(i * 5, i * 5 + 5))]) {
    const { out, recorded } = await run(reads, "text/event-stream", true);
    assert.equal(out, expected, `${reads.length} reads`);
    assert.deepEqual(recorded, [3, 2, 2], `${reads.length} reads`);
  }
});

test("SSE: a usage chunk with more lines than its data (event, id) goes whole, and is charged, in one read and in 5-byte reads", async () => {
  const events = [content("a"), `event: chunk\nid: 9\n${usageChunk}`, "data: [DONE]\n\n"];
  const bytes = Buffer.from(events.join(""));
  for (const reads of [[bytes], Array.from({ length: Math.ceil(bytes.length / 5) }, (_, i) => bytes.subarray(i * 5, i * 5 + 5))]) {
    const { out, recorded } = await run(reads, "text/event-stream", true);
    assert.equal(out, content("a") + "data: [DONE]\n\n", `${reads.length} reads`);
    assert.deepEqual(recorded, [7], `${reads.length} reads`);
  }
});

test("SSE: a usage chunk counts the same in every layout: details, braces and quotes in strings, spaces, another order, a broken usage", async () => {
  const details = { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, prompt_tokens_details: { cached_tokens: 1 }, note: 'a } " { \\' };
  const dropped = [
    `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [], usage: details })}\n\n`,
    `data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}\n\n`,
    `data: ${JSON.stringify({ usage: details, choices: [] })}\n\n`,
    `data: ${JSON.stringify({ choices: [], usage: details })} \n\n`,
  ];
  for (const chunk of dropped) {
    const { out, recorded } = await run([content("a"), chunk, "data: [DONE]\n\n"], "text/event-stream", true);
    assert.equal(out, content("a") + "data: [DONE]\n\n", chunk);
    assert.deepEqual(recorded, [7], chunk);
  }
  // Not read as a usage: kept as it is, nothing counted (nested, not top-level; no total; not JSON; the tail inside a string).
  const kept = [
    `data: {"x":{"choices":[],"usage":{"total_tokens":7}}}\n\n`,
    `data: {"choices":[],"usage":{}}\n\n`,
    `data: {"choices":[],"usage":{"total_tokens":7,}}\n\n`,
    `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: '"choices":[],"usage":{"total_tokens":7}}' } }], usage: null })}\n\n`,
  ];
  for (const chunk of kept) {
    const { out, recorded } = await run([chunk, "data: [DONE]\n\n"], "text/event-stream", true);
    assert.equal(out, chunk + "data: [DONE]\n\n", chunk);
    assert.deepEqual(recorded, [], chunk);
  }
});

test("a usage object is counted as JSON.parse reads it, in a stream's usage chunk and at a JSON answer's end, whatever its members", async () => {
  const usages = [
    `{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}`,
    `{"total_tokens":21,"completion_tokens":12,"prompt_tokens":9}`,
    `{"prompt_tokens":9,"completion_tokens":12}`,
    `{"input_tokens":5,"output_tokens":6}`,
    `{"prompt_tokens":9,"input_tokens":5,"output_tokens":6,"completion_tokens":null}`,
    `{"prompt_tokens":9,"total_tokens":30,"total_tokens":21}`,
    `{"prompt_tokens":9,"completion_tokens":12,"total_tokens":null,"prompt_tokens_details":null}`,
    `{"total_tokens":0}`,
    `{"cached":3}`,
    `{}`,
    `{"prompt\\u005ftokens":9,"completion_tokens":1}`,
    `{"prompt_tokens":9,"x\\u0022y":1,"completion_tokens":1}`,
    `{"prompt_tokens":9,"completion_tokens":1.5}`,
    `{"prompt_tokens":9,"completion_tokens":1e1}`,
    `{"prompt_tokens":-9,"completion_tokens":3}`,
    `{"prompt_tokens":9, "completion_tokens":3}`,
    `{"prompt_tokens":123456789012345678,"completion_tokens":3}`,
    `{"prompt_tokens":"9","completion_tokens":3}`,
    `{"prompt_tokens":9,"completion_tokens":3,"note":"\\\\"}`,
    `{"prompt_tokens":9,"details":{"completion_tokens":99},"completion_tokens":3}`,
    `{"prompt_tokens":09,"completion_tokens":3}`,
    `{"prompt_tokens":9,"completion_tokens":3,}`,
    `{"prompt_tokens":9,,"completion_tokens":3}`,
    `{"prompt_tokens":9,"completion_tokens":}`,
    `{"prompt_tokens":nul,"completion_tokens":3}`,
    `{"prompt_tokens":9,"completion_tokens":3,"é":1}`,
  ];
  /** What an uncompressed answer is charged (at once: nothing to wait for). */
  const charged = async (answer: string, contentType: string) => {
    const recorded: TokenCount[] = [];
    await buffer(meterUsage(Readable.from([Buffer.from(answer)]), { contentType, contentEncoding: undefined, stripUsageChunk: true, estimate: undefined, record: (n) => recorded.push(n) }));
    return recorded;
  };
  for (const usage of usages) {
    let expected: TokenCount[] = [];
    try {
      const counted = usageCount(JSON.parse(usage));
      // A usage of no tokens charges nothing.
      if (counted !== undefined && counted.total > 0) expected = [counted];
    } catch {
      expected = [];
    }
    const stream = content("a") + `data: {"id":"c","choices":[],"usage":${usage}}\n\n` + "data: [DONE]\n\n";
    assert.deepEqual(await charged(stream, "text/event-stream"), expected, `stream: ${usage}`);
    assert.deepEqual(await charged(`{"id":"c","usage":${usage},"service_tier":"default"}`, "application/json"), expected, `JSON: ${usage}`);
  }
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

test("JSON: only the top-level usage counts, wherever it is, whatever the chunking", async () => {
  const body = JSON.stringify({ usage: { total_tokens: 5 }, choices: [{ message: { content: 'a "usage": {"total_tokens": 99}, \\\\', usage: { total_tokens: 77 } } }], model: "m" });
  const pieces = [];
  for (let i = 0; i < body.length; i += 3) pieces.push(body.slice(i, i + 3));
  const { out, recorded } = await run(pieces, "application/json", false);
  assert.equal(out, body);
  assert.deepEqual(recorded, [5]);
});

test("JSON: the usage read from the answer's end is the one JSON.parse finds at the top level, whatever follows it", async () => {
  const answers = [
    // OpenAI's order: usage, then service_tier and system_fingerprint.
    `{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"service_tier":"default","system_fingerprint":"fp_1"}`,
    `{\n\t"id": "c",\n\t"usage" : {\n\t\t"prompt_tokens": 1,\n\t\t"completion_tokens": 2\n\t}\n}\n`,
    `{"usage":{"total_tokens":5},"meta":{"usage":{"total_tokens":99}}}`,
    `{"usage":{"total_tokens":5},"list":[{"usage":{"total_tokens":99}}]}`,
    `{"usage":{"total_tokens":5},"usage":{"total_tokens":6}}`,
    `{"usage":{"total_tokens":5},"note":"\"usage\": {\"total_tokens\": 99}}"}`,
    `{"usage":{"total_tokens":5},"x\\"usage":{"total_tokens":99}}`,
    `{"usage":{"total_tokens":5,"note":"}} ]"}}`,
    `{"usage":{"total_tokens":5},"u":"\\\\","usage":{"total_tokens":8}}`,
    `{"id":"x","usage":null}`,
    `{"id":"x","usage":7}`,
    `[{"usage":{"total_tokens":5}}]`,
    `{"id":"x","usage":{"total_tokens":5}`,
  ];
  for (const body of answers) {
    let expected: number[] = [];
    try {
      const json = JSON.parse(body) as { usage?: unknown };
      const total = Array.isArray(json) ? undefined : usageTotal(json.usage);
      if (total !== undefined) expected = [total];
    } catch {
      expected = [];
    }
    const { out, recorded } = await run([body], "application/json", false);
    assert.equal(out, body);
    assert.deepEqual(recorded, expected, body);
  }
  // Not JSON as a whole, but it ends with a top-level usage: the rest is not validated (as in the byte scan of a large answer).
  assert.deepEqual((await run([`{"usage":{"total_tokens":5}} {"usage":{"total_tokens":9}}`], "application/json", false)).recorded, [9]);
});

test("JSON: a usage read while the answer was small still counts once the answer outgrows what is held", async () => {
  const body = JSON.stringify({ usage: { total_tokens: 9 }, choices: [{ message: { content: "y".repeat(200 * 1024) } }] });
  const pieces = [];
  for (let i = 0; i < body.length; i += 10 * 1024) pieces.push(body.slice(i, i + 10 * 1024));
  const { out, recorded } = await run(pieces, "application/json", false);
  assert.equal(out, body);
  assert.deepEqual(recorded, [9]);
});

test("JSON: an escaped key spelling usage is the usage key", async () => {
  const { recorded } = await run([`{"id":"x","\\u0075sage":{"prompt_tokens":2,"completion_tokens":3}}`], "application/json", false);
  assert.deepEqual(recorded, [5]);
});

test("JSON: a 20 MiB answer is counted from the usage after its content", async () => {
  const filler = "x".repeat(1024 * 1024);
  const chunks = ['{"choices":[{"message":{"content":"'];
  for (let i = 0; i < 20; i++) chunks.push(filler);
  chunks.push('"}}],"usage":{"total_tokens":42}}');
  const { out, recorded } = await run(chunks, "application/json", false);
  assert.equal(out.length, 20 * 1024 * 1024 + chunks[0]!.length + chunks.at(-1)!.length);
  assert.deepEqual(recorded, [42]);
});

test("compressed answers are decoded for the meter and passed to the client untouched, unless their usage chunk goes", async () => {
  const body = JSON.stringify({ usage: { total_tokens: 9 } });
  const sse = content("a") + usageChunk + "data: [DONE]\n\n";
  const codings = [["gzip", gzipSync, gunzipSync], ["deflate", deflateSync, inflateSync], ["br", brotliCompressSync, brotliDecompressSync]] as const;
  for (const [encoding, compress, decompress] of codings) {
    const json = await run([compress(body)], "application/json", false, { contentEncoding: encoding });
    assert.deepEqual(json.recorded, [9], encoding);
    const stream = compress(sse);
    const kept = await run([stream.subarray(0, 5), stream.subarray(5)], "text/event-stream", false, { contentEncoding: encoding });
    assert.deepEqual(kept.recorded, [7], encoding);
    assert.deepEqual(kept.bytes, stream, "the compressed bytes pass as they came");
    // The chunk the gateway asked for: removed, as from a plain stream, and the rest encoded again in the same coding.
    const stripped = await run([stream.subarray(0, 5), stream.subarray(5)], "text/event-stream", true, { contentEncoding: encoding });
    assert.deepEqual(stripped.recorded, [7], encoding);
    assert.equal(decompress(stripped.bytes).toString(), content("a") + "data: [DONE]\n\n", encoding);
  }
});

test("a compressed stream whose usage chunk goes still reaches the client event by event", async () => {
  const upstream = new PassThrough();
  const gzip = createGzip();
  gzip.pipe(upstream);
  const client = meterUsage(upstream, { contentType: "text/event-stream", contentEncoding: "gzip", stripUsageChunk: true, estimate: undefined, record: () => {} });
  const unzipped = client.pipe(createGunzip());
  gzip.write(content("first"));
  gzip.flush();
  // The upstream has not ended: the first event must be readable already.
  const [first] = (await once(unzipped, "data")) as [Buffer];
  assert.equal(first.toString(), content("first"));
  gzip.end(usageChunk + "data: [DONE]\n\n");
  assert.equal((await buffer(unzipped)).toString(), "data: [DONE]\n\n");
});

test("an answer without a readable usage is charged the estimate: max tokens plus prompt, else what was streamed", async () => {
  const estimate = { promptTokens: 10, maxTokens: 50 };
  assert.deepEqual((await run([content("a")], "text/event-stream", true, { estimate })).recorded, [60]);
  const streamed = { promptTokens: 10, maxTokens: undefined };
  assert.deepEqual((await run([content("a") + content("b") + content("c")], "text/event-stream", true, { estimate: streamed })).recorded, [13]);
  assert.deepEqual((await run([gzipSync("{}")], "application/json", false, { contentEncoding: "x-unknown", estimate })).recorded, [60]);
  assert.deepEqual((await run(["{}"], "application/json", false, { estimate: { promptTokens: 0, maxTokens: 0 } })).recorded, [1], "never zero");
  // A small JSON answer (held whole) without a usage, no max tokens: its bytes / 4, as a large one's.
  const answer = JSON.stringify({ id: "x", text: "a".repeat(380) });
  assert.equal(answer.length, 400);
  assert.deepEqual((await run([answer.slice(0, 150), answer.slice(150)], "application/json", false, { estimate: streamed })).recorded, [110]);
  // Not an inference answer: nothing to estimate.
  assert.deepEqual((await run(["{}"], "application/json", false)).recorded, []);
});

test("running usage totals on every chunk are charged by what each adds", async () => {
  const running = (n: number) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "w" } }], usage: { total_tokens: n } })}\n\n`;
  const { recorded } = await run([running(3) + running(4) + running(6)], "text/event-stream", false);
  assert.deepEqual(recorded, [3, 1, 2]);
});

test("without a budget, a client that leaves before the usage: the upstream is cut with it and charged the estimate", async () => {
  for (const [contentType, strip] of [["text/event-stream", true], ["text/event-stream", false], ["application/json", false]] as const) {
    const recorded: number[] = [];
    const upstream = new PassThrough();
    const client = meterUsage(upstream, { contentType, contentEncoding: undefined, stripUsageChunk: strip, estimate: { promptTokens: 1, maxTokens: 100 }, record: (n) => recorded.push(n.total) });
    client.resume();
    upstream.write(contentType === "application/json" ? '{"id":"x",' : content("a"));
    await new Promise((resolve) => setImmediate(resolve));
    client.destroy();
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(upstream.destroyed, `${contentType}: the upstream is cut when the client leaves`);
    assert.deepEqual(recorded, [101], `${contentType}: charged the estimate`);
  }
});

/**
 * A budgeted stream whose client leaves after its first event: `connect`
 * meters `upstream` to a client it returns (reading), which then goes away.
 * The upstream must be read on until its usage, charged, then stopped.
 */
async function budgetedClientLeaves(connect: (upstream: PassThrough, options: MeterOptions) => { destroy(): void }) {
  const recorded: number[] = [];
  const upstream = new PassThrough();
  const client = connect(upstream, { contentType: "text/event-stream", contentEncoding: undefined, stripUsageChunk: true, estimate: { promptTokens: 1, maxTokens: 100 }, record: (n) => recorded.push(n.total), budgeted: true });
  upstream.write(content("a"));
  await new Promise((resolve) => setImmediate(resolve));
  client.destroy();
  await new Promise((resolve) => setImmediate(resolve));
  upstream.write(content("b"));
  upstream.write(usageChunk);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(recorded, [7]);
  assert.ok(upstream.destroyed, "the upstream is stopped once the usage is charged");
}

test("with a budget, a client that leaves before the usage: the upstream is read on until the usage, then stopped", async () => {
  await budgetedClientLeaves((upstream, options) => meterUsage(upstream, options).resume());
});

/**
 * An upstream that streams content events and never ends (no usage, ever),
 * `pad` bytes each, one every `everyMs`. Says how many bytes it had written
 * and when, once the gateway side hung up.
 */
async function startEndlessUpstream(pad: number, everyMs: number) {
  let hungUp: (at: { bytes: number; at: number }) => void;
  const cut = new Promise<{ bytes: number; at: number }>((resolve) => (hungUp = resolve));
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    let bytes = 0;
    const event = content("x".repeat(pad));
    const timer = setInterval(() => {
      // Written whether or not the socket keeps up: the bytes the meter reads are what it bounds.
      res.write(event);
      bytes += Buffer.byteLength(event);
    }, everyMs);
    res.on("close", () => {
      clearInterval(timer);
      hungUp({ bytes, at: Date.now() });
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`,
    cut,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * What the gateway does with a metered streamed answer (server.ts): the
 * upstream request under {@link drainSignal}, its body through
 * {@link meterUsage}; the client reads a little and leaves.
 */
async function clientLeavesEndlessStream(bounds: DrainBounds, pad: number, everyMs: number) {
  const upstream = await startEndlessUpstream(pad, everyMs);
  const recorded: number[] = [];
  const client = new AbortController();
  try {
    const answer = await request(upstream.url, { method: "POST", body: "{}", signal: drainSignal(client.signal, bounds) });
    const toClient = meterUsage(answer.body, {
      contentType: "text/event-stream",
      contentEncoding: undefined,
      stripUsageChunk: true,
      estimate: { promptTokens: 2, maxTokens: undefined },
      record: (n) => recorded.push(n.total),
      budgeted: true,
      drain: bounds,
    });
    toClient.resume();
    await once(toClient, "data");
    const left = Date.now();
    client.abort();
    toClient.destroy();
    const cut = await Promise.race([upstream.cut, new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the upstream was never cut")), 10_000))]);
    for (let waited = 0; recorded.length === 0 && waited < 1000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
    return { recorded, afterMs: cut.at - left, bytes: cut.bytes };
  } finally {
    await upstream.close();
  }
}

test("a client that leaves an endless stream: past the byte bound the upstream is cut and the estimate charged", async () => {
  // 64 KiB events as fast as the timer goes: the byte bound (1 MiB) comes long before the time bound (60 s).
  const { recorded, afterMs, bytes } = await clientLeavesEndlessStream({ maxBytes: 1024 * 1024, maxMs: 60_000 }, 64 * 1024, 1);
  assert.ok(afterMs < 10_000, `cut after ${afterMs} ms`);
  // What the upstream wrote is at least what was drained; a socket and stream buffers (a few MiB at most) lie between.
  assert.ok(bytes > 1024 * 1024 && bytes < 16 * 1024 * 1024, `the upstream wrote ${bytes} bytes before it was cut`);
  assert.equal(recorded.length, 1, `charged ${JSON.stringify(recorded)}`);
  // The prompt estimate (2) plus one token per event read, and those were the 1 MiB's 16 at most: never nothing, never past the bound.
  assert.ok(recorded[0]! > 2 && recorded[0]! <= 2 + 1 + 16, `charged ${recorded[0]}`);
});

test("a client that leaves an endless stream: past the time bound the upstream is cut and the estimate charged", async () => {
  // Small events, slowly: the byte bound is never reached; the time bound (400 ms) cuts.
  const { recorded, afterMs, bytes } = await clientLeavesEndlessStream({ maxBytes: 8 * 1024 * 1024, maxMs: 400 }, 10, 20);
  assert.ok(afterMs >= 380 && afterMs < 3_000, `cut ${afterMs} ms after the client left`);
  assert.ok(bytes < 1024 * 1024);
  assert.equal(recorded.length, 1, `charged ${JSON.stringify(recorded)}`);
  assert.ok(recorded[0]! > 2 + 10, `charged ${recorded[0]}: the prompt estimate plus the events read while draining`);
});

test("the estimate of a request: its body's bytes / 4, and max tokens times the choices asked for", async () => {
  const plan = async (path: string, json: Record<string, unknown>) => {
    const bytes = Buffer.from(JSON.stringify(json));
    const read = { parts: [bytes], length: bytes.length, json: scanJson(bytes), contentType: "application/json" };
    return (await prepareUsage({ method: "POST" } as IncomingMessage, path, read, { maxBytes: 1 << 20, idleMs: 1000 })).estimate;
  };
  const body = { model: "m", messages: [], max_completion_tokens: 10, n: 3 };
  assert.deepEqual(await plan("/v1/chat/completions", body), { promptTokens: Math.ceil(JSON.stringify(body).length / 4), maxTokens: 30 });
  assert.equal((await plan("/v1/responses", { model: "m", input: "x", max_output_tokens: 7 }))?.maxTokens, 7);
  assert.equal((await plan("/v1/embeddings", { model: "m", input: "x" }))?.maxTokens, undefined);
  assert.equal(await plan("/v1/files", { purpose: "x" }), undefined, "not an inference route");
});

test("with a budget the client has the answer's end only once its charge is stored: a stream's end, a small JSON answer whole", async () => {
  /** A charge the test stores by hand. */
  const pending = () => {
    let store!: () => void;
    const stored = new Promise<void>((resolve) => (store = resolve));
    return { stored, store };
  };
  const settles = async (p: Promise<unknown>) => (await Promise.race([p.then(() => true), new Promise((r) => setTimeout(() => r(false), 50))])) as boolean;

  // A stream: its events reach the client as they come; its end waits for the charge.
  const sse = pending();
  const upstream = new PassThrough();
  const client = meterUsage(upstream, { contentType: "text/event-stream", contentEncoding: undefined, stripUsageChunk: true, estimate: undefined, record: () => sse.stored, budgeted: true });
  const read = buffer(client);
  upstream.end(content("hi") + usageChunk + "data: [DONE]\n\n");
  assert.equal(await settles(read), false, "the stream must not end before its charge is stored");
  sse.store();
  assert.equal((await read).toString(), content("hi") + "data: [DONE]\n\n");

  // A small JSON answer: nothing of it before the charge is stored, then all of it.
  const json = pending();
  const answer = JSON.stringify({ id: "x", usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } });
  const jsonUpstream = new PassThrough();
  const jsonClient = meterUsage(jsonUpstream, { contentType: "application/json", contentEncoding: undefined, stripUsageChunk: false, estimate: undefined, record: () => json.stored, budgeted: true });
  let early = 0;
  jsonClient.on("data", (chunk: Buffer) => (early += chunk.length));
  const ended = once(jsonClient, "end");
  jsonUpstream.end(answer);
  assert.equal(await settles(ended), false);
  assert.equal(early, 0, "no byte of a small JSON answer before its charge is stored");
  json.store();
  await ended;
  assert.equal(early, answer.length);

  // Without a budget nothing waits: the same answer passes as it comes.
  assert.equal((await run([answer], "application/json", false, { record: () => new Promise(() => {}) })).out, answer);
});

test("into the client's response: what one read of the upstream gives reaches the client at once, as one write, and nothing waits for the next", async () => {
  const writes: string[] = [];
  const client = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      writes.push(chunk.toString());
      callback();
    },
  });
  const upstream = new PassThrough();
  const recorded: number[] = [];
  meterUsageInto(upstream, client, { contentType: "text/event-stream", contentEncoding: undefined, stripUsageChunk: true, estimate: undefined, record: (n) => recorded.push(n.total) });
  // Three events in one go (as an HTTP client hands over the chunks of one socket read), the usage chunk among them.
  upstream.write(content("a"));
  upstream.write(usageChunk);
  upstream.write(content("b"));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(writes, [content("a") + content("b")]);
  assert.deepEqual(recorded, [7]);
  // The next read: written as it comes, before the answer ends.
  upstream.write(content("c"));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(writes, [content("a") + content("b"), content("c")]);
  upstream.end("data: [DONE]\n\n");
  await once(client, "finish");
  assert.equal(writes.join(""), content("a") + content("b") + content("c") + "data: [DONE]\n\n");
});

test("into the client's response: the stripped stream, in order, under backpressure; a budgeted client that leaves is read on", async () => {
  // A slow client: a 64-byte buffer, each write acknowledged on the next turn.
  const received: Buffer[] = [];
  const slow = new Writable({
    highWaterMark: 64,
    write(chunk: Buffer, _encoding, callback) {
      received.push(chunk);
      setImmediate(callback);
    },
  });
  const upstream = new PassThrough();
  const recorded: number[] = [];
  meterUsageInto(upstream, slow, { contentType: "text/event-stream", contentEncoding: undefined, stripUsageChunk: true, estimate: undefined, record: (n) => recorded.push(n.total) });
  const words = Array.from({ length: 200 }, (_, i) => `w${i}`);
  let paused = false;
  for (const word of words) {
    upstream.write(content(word));
    if (upstream.isPaused()) paused = true;
    await new Promise((resolve) => setImmediate(resolve));
  }
  upstream.end(usageChunk + "data: [DONE]\n\n");
  await once(slow, "finish");
  assert.equal(Buffer.concat(received).toString(), words.map(content).join("") + "data: [DONE]\n\n");
  assert.deepEqual(recorded, [7]);
  assert.ok(paused, "the upstream was paused while the client was behind");

  // With a budget, the client leaving before the usage: read on until it, then stopped.
  await budgetedClientLeaves((upstream, options) => {
    const response = new PassThrough();
    meterUsageInto(upstream, response, options);
    return response.resume();
  });
});
