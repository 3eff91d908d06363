import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { brotliDecompressSync, gunzipSync, inflateSync } from "node:zlib";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { request } from "undici";
import { eventually } from "../support/eventually.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * Token budgets that cannot be dodged (issue 19), end to end with the real
 * gateway, the demo upstream as a process and the `openai` client: a client
 * that leaves early, a compressed answer, a huge JSON answer and an answer
 * whose usage never comes are all charged.
 *
 * The demo upstream counts words: "hello there" costs 2 prompt + 4
 * completion ("You said: hello there") = 6 tokens, exactly the daily budget
 * below, so a charged request makes the next one a 429. The hourly limit is
 * there to be read: its RateLimit `r` tells how many tokens were charged.
 */

const HOURLY = 1_000_000;

let upstream: UpstreamProcess;
let gateway: GatewayProcess;
let dir: string;

before(async () => {
  upstream = await startUpstreamProcess();
  dir = mkdtempSync(join(tmpdir(), "tollgate-token-budgets-"));
  gateway = await startGateway({
    config: {
      server: {
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1/32", "::1"] } },
        quota: {
          kvstore: { type: "sqlite", db_path: join(dir, "q.db") },
          limits: [
            { tokens: 6, period: "day" },
            { tokens: HOURLY, period: "hour" },
          ],
        },
      },
      upstream: { url: upstream.url },
    },
  });
});
after(async () => {
  await gateway?.close();
  await upstream?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function client(principal: string, headers: Record<string, string> = {}): OpenAI {
  return new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", defaultHeaders: { "x-user": principal, ...headers }, maxRetries: 0 });
}

const ask = { model: "demo-small", messages: [{ role: "user" as const, content: "hello there" }] };

/** What the quota store holds for `principal`: the status of a probe request and the tokens charged this hour. */
async function charged(principal: string): Promise<{ status: number; tokens: number }> {
  const res = await request(`${gateway.url}/v1/models`, { headers: { "x-user": principal } });
  await res.body.dump();
  const m = /"tokens-hour";r=(\d+)/.exec(String(res.headers.ratelimit ?? ""));
  assert.ok(m, `no tokens-hour in RateLimit: ${String(res.headers.ratelimit)}`);
  return { status: res.statusCode, tokens: HOURLY - Number(m[1]) };
}

/** Waits until `principal` has been charged (its next request is refused), and returns what was charged. */
function refusedOnceCharged(principal: string, timeoutMs = 5000): Promise<{ status: number; tokens: number }> {
  return eventually(() => charged(principal), (c) => c.status === 429, { timeoutMs });
}

/** What the upstream received from `principal` on a chat completion. */
async function upstreamRequestOf(principal: string) {
  return upstream.waitForRequest((r) => r.headers["x-user"] === principal && r.path === "/v1/chat/completions");
}

test("a client that leaves right after the last content chunk is charged the usage that came after it", async () => {
  const principal = "leaves-early";
  // The usage chunk comes 300 ms after the last content chunk; the client does not wait for it.
  const stream = await client(principal, { "x-demo-usage-delay-ms": "300" }).chat.completions.create({ ...ask, stream: true });
  let text = "";
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.choices[0]?.finish_reason === "stop") break; // closes the connection
  }
  assert.equal(text, "You said: hello there");
  assert.deepEqual(await refusedOnceCharged(principal), { status: 429, tokens: 6 });
  // The gateway read the upstream's answer to its end after the client left.
  assert.equal((await upstreamRequestOf(principal)).completed, true);
});

test("tokens are charged the moment the usage chunk arrives, not when the stream ends", async () => {
  const principal = "charged-at-once";
  // `data: [DONE]` comes 4 s after the usage chunk: the charge must not wait for it.
  const stream = await client(principal, { "x-demo-end-delay-ms": "4000" }).chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  const started = Date.now();
  const iterator = stream[Symbol.asyncIterator]();
  for (let next = await iterator.next(); !next.done; next = await iterator.next()) if (next.value.usage) break;
  assert.deepEqual(await refusedOnceCharged(principal, 2000), { status: 429, tokens: 6 });
  assert.ok(Date.now() - started < 4000, "charged before the stream ended");
  stream.controller.abort();
});

test("compressed answers (gzip, deflate, br; JSON and streamed) are charged, and reach the client intact", async () => {
  for (const encoding of ["gzip", "deflate", "br"]) {
    const json = `compressed-json-${encoding}`;
    const answer = await client(json, { "x-demo-content-encoding": encoding }).chat.completions.create(ask);
    assert.equal(answer.choices[0]?.message.content, "You said: hello there");
    assert.deepEqual(await refusedOnceCharged(json), { status: 429, tokens: 6 }, `${encoding} JSON`);

    const streamed = `compressed-stream-${encoding}`;
    const stream = await client(streamed, { "x-demo-content-encoding": encoding }).chat.completions.create({ ...ask, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    assert.equal(text, "You said: hello there");
    assert.deepEqual(await refusedOnceCharged(streamed), { status: 429, tokens: 6 }, `${encoding} stream`);
  }
});

test("the usage chunk the gateway asked for is removed from a compressed stream as from a plain one", async () => {
  const decode: Record<string, (b: Buffer) => Buffer> = { identity: (b) => b, gzip: gunzipSync, deflate: inflateSync, br: brotliDecompressSync };
  const seen: Record<string, string[]> = {};
  for (const [encoding, decompress] of Object.entries(decode)) {
    const principal = `stripped-${encoding}`;
    // The client does not ask for usage: the gateway asks on its behalf.
    const res = await request(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "x-user": principal, "content-type": "application/json", "accept-encoding": "gzip, deflate, br", ...(encoding === "identity" ? {} : { "x-demo-content-encoding": encoding }) },
      body: JSON.stringify({ ...ask, stream: true }),
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers["content-encoding"], encoding === "identity" ? undefined : encoding);
    const events = decompress(Buffer.from(await res.body.arrayBuffer())).toString().split("\n\n").filter(Boolean);
    // What the client sees of each event: its content, or that it reports usage.
    seen[encoding] = events.map((e) => {
      if (e === "data: [DONE]") return "[DONE]";
      const chunk = JSON.parse(e.slice("data: ".length)) as { choices: { delta?: { content?: string } }[]; usage?: unknown };
      return chunk.usage ? "usage" : (chunk.choices[0]?.delta?.content ?? "");
    });
    assert.equal((await upstreamRequestOf(principal)).body.includes('"include_usage":true'), true, "the gateway asked for usage");
    assert.deepEqual(await refusedOnceCharged(principal), { status: 429, tokens: 6 }, encoding);
  }
  assert.ok(!seen.identity!.includes("usage") && seen.identity!.at(-1) === "[DONE]", JSON.stringify(seen.identity));
  for (const encoding of ["gzip", "deflate", "br"]) assert.deepEqual(seen[encoding], seen.identity, `${encoding}: the client sees what a plain stream shows`);
});

test("an answer in an encoding the gateway cannot decode is charged the estimate", async () => {
  const principal = "unknown-encoding";
  const body = JSON.stringify({ ...ask, max_tokens: 20 });
  const res = await request(`${gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "x-user": principal, "content-type": "application/json", "x-demo-content-encoding": "x-demo-unknown" },
    body,
  });
  assert.equal(res.statusCode, 200);
  assert.equal(res.headers["content-encoding"], "x-demo-unknown");
  assert.equal(JSON.parse(await res.body.text()).usage.total_tokens, 6, "the client gets the bytes untouched");
  // max_tokens + the prompt estimate (request bytes / 4).
  assert.deepEqual(await refusedOnceCharged(principal), { status: 429, tokens: 20 + Math.ceil(Buffer.byteLength(body) / 4) });
});

test("a JSON answer over 16 MiB is charged from the usage after its content", async () => {
  const principal = "huge-answer";
  const res = await request(`${gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "x-user": principal, "content-type": "application/json", "x-demo-pad-bytes": String(17 * 1024 * 1024) },
    body: JSON.stringify(ask),
  });
  assert.equal(res.statusCode, 200);
  let size = 0;
  for await (const chunk of res.body) size += (chunk as Buffer).length;
  assert.ok(size > 17 * 1024 * 1024, `got ${size} bytes`);
  assert.deepEqual(await refusedOnceCharged(principal), { status: 429, tokens: 6 });
});

test("a client that leaves before a usage that never comes is charged the estimate: max_tokens plus the prompt", async () => {
  const principal = "never-usage-max";
  // The upstream cuts its answer after 3 events, 100 ms apart; the client leaves after the first.
  const headers = { "x-demo-chunk-delay-ms": "100", "x-demo-reset-after-chunks": "3" };
  const params = { ...ask, stream: true as const, max_tokens: 50 };
  const stream = await client(principal, headers).chat.completions.create(params);
  for await (const _ of stream) break;
  const { tokens } = await refusedOnceCharged(principal);
  // The prompt estimate is the request body's bytes / 4 (the SDK's JSON of `params`, give or take its spacing).
  const prompt = Math.ceil(Buffer.byteLength(JSON.stringify(params)) / 4);
  assert.ok(tokens >= 50 + prompt - 2 && tokens <= 50 + prompt + 2, `charged ${tokens}, expected about ${50 + prompt}`);
  assert.equal((await upstreamRequestOf(principal)).aborted, true, "the upstream cut its answer");
});

test("without max_tokens the estimate is the prompt plus the chunks streamed so far, never zero", async () => {
  const principal = "never-usage-streamed";
  const headers = { "x-demo-chunk-delay-ms": "100", "x-demo-reset-after-chunks": "3" };
  const stream = await client(principal, headers).chat.completions.create({ ...ask, stream: true });
  for await (const _ of stream) break;
  const { tokens } = await refusedOnceCharged(principal);
  // Three events reached the gateway, each counted as one token, on top of the prompt's estimate.
  const prompt = Math.ceil(Buffer.byteLength(JSON.stringify({ ...ask, stream: true })) / 4);
  assert.ok(tokens >= prompt + 3 - 2 && tokens <= prompt + 3 + 2, `charged ${tokens}, expected about ${prompt + 3}`);
});
