import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { request } from "undici";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * The demo upstream's benchmark headers (issue 16): a long stream of a set
 * number of tokens, each event stamped with the time it was written, so that
 * `npm run bench` can measure the delay a gateway adds per token.
 */

let upstream: UpstreamProcess;

before(async () => {
  upstream = await startUpstreamProcess();
});
after(() => upstream.close());

/** The parsed `data:` events of a chat stream, with the wall-clock time each chunk of them arrived. */
async function streamChat(headers: Record<string, string>): Promise<{ event: Record<string, unknown>; arrived: number }[]> {
  const res = await request(`${upstream.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "Say hello" }], stream: true }),
  });
  assert.equal(res.statusCode, 200);
  const out: { event: Record<string, unknown>; arrived: number }[] = [];
  let pending = "";
  for await (const chunk of res.body) {
    const arrived = performance.timeOrigin + performance.now();
    pending += chunk.toString();
    const parts = pending.split("\n\n");
    pending = parts.pop() ?? "";
    for (const part of parts) {
      const data = part.replace(/^data: /, "");
      if (data !== "[DONE]") out.push({ event: JSON.parse(data) as Record<string, unknown>, arrived });
    }
  }
  return out;
}

const contentOf = (e: Record<string, unknown>) => (e.choices as { delta: { content?: string } }[])[0]?.delta.content;

test("x-demo-stream-tokens sends that many content events, the reply's words over and over, paced by x-demo-chunk-delay-ms", async () => {
  const started = performance.now();
  const events = await streamChat({ "x-demo-stream-tokens": "7", "x-demo-chunk-delay-ms": "20" });
  const contents = events.map((e) => contentOf(e.event)).filter((c) => c !== undefined && c !== "");
  assert.deepEqual(contents, ["You", " said:", " Say", " hello", " You", " said:", " Say"]);
  // role + 7 tokens + stop = 9 events, 8 pauses of 20 ms, then one more before [DONE].
  assert.ok(performance.now() - started >= 8 * 20, "the stream is paced");
});

test("without x-demo-stream-tokens a stream carries the reply once and no stamp", async () => {
  const events = await streamChat({});
  assert.deepEqual(events.map((e) => contentOf(e.event)).filter(Boolean), ["You", " said:", " Say", " hello"]);
  assert.ok(events.every((e) => !("demo_sent_at" in e.event)));
});

test("x-demo-stamp: 1 stamps every event with the wall-clock time it was written, before it arrived", async () => {
  const events = await streamChat({ "x-demo-stamp": "1", "x-demo-stream-tokens": "5", "x-demo-chunk-delay-ms": "15" });
  assert.equal(events.length, 7);
  const stamps = events.map((e) => e.event.demo_sent_at as number);
  for (const [i, { arrived }] of events.entries()) {
    assert.equal(typeof stamps[i], "number");
    assert.ok(stamps[i]! <= arrived + 1, `event ${i} stamped ${stamps[i]}, arrived ${arrived}`);
    assert.ok(arrived - stamps[i]! < 1000, "the stamp is the write time, not the start of the stream");
    if (i > 0) assert.ok(stamps[i]! - stamps[i - 1]! >= 10, "each event is stamped as it is written, 15 ms apart");
  }
});
