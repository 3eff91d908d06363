import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

/**
 * LLM token budgets end to end with the official `openai` client: tokens are
 * counted from `usage` (JSON and streamed), a streamed chat completion is
 * asked for usage on the client's behalf without the client seeing the extra
 * chunk, and a client over its budget is refused before the upstream.
 *
 * The demo upstream counts words: "hello there" costs 2 prompt + 4
 * completion ("You said: hello there") = 6 tokens.
 */

let upstream: UpstreamProcess;
let gateway: GatewayProcess;
let dir: string;

before(async () => {
  upstream = await startUpstreamProcess();
  dir = mkdtempSync(join(tmpdir(), "tollgate-quota-tokens-"));
  gateway = await startGateway({
    config: {
      server: {
        auth: { provider_config: { type: "upstream_header", principal_header: "x-user", trusted_proxies: ["127.0.0.1"] } },
        quota: { kvstore: { type: "sqlite", db_path: join(dir, "q.db") }, limits: [{ tokens: 30, period: "day" }] },
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

function client(principal: string): OpenAI {
  return new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", defaultHeaders: { "x-user": principal }, maxRetries: 0 });
}

const ask = { model: "demo-small", messages: [{ role: "user" as const, content: "hello there" }] };

function tokensLeft(headers: Headers): number {
  const m = /"tokens-day";r=(\d+)/.exec(headers.get("ratelimit") ?? "");
  assert.ok(m, `no tokens-day in RateLimit: ${headers.get("ratelimit")}`);
  return Number(m[1]);
}

test("JSON responses are counted from usage; RateLimit shows the tokens left", async () => {
  const openai = client("json-user");
  const first = await openai.chat.completions.create(ask).withResponse();
  assert.equal(first.data.usage?.total_tokens, 6);
  assert.equal(tokensLeft(first.response.headers), 30);
  assert.match(first.response.headers.get("ratelimit-policy")!, /"tokens-day";q=30;w=86400;qu="tokens"/);
  const second = await openai.chat.completions.create(ask).withResponse();
  assert.equal(tokensLeft(second.response.headers), 24);
});

test("a streamed chat completion is counted; the client that did not ask for usage never sees the usage chunk", async () => {
  const openai = client("stream-user");
  const stream = await openai.chat.completions.create({ ...ask, stream: true });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""), "You said: hello there");
  assert.ok(chunks.every((c) => c.choices.length > 0), "no usage-only chunk reached the client");
  assert.ok(chunks.every((c) => !c.usage), "no usage reached the client");
  const seen = await upstream.waitForRequest((r) => r.headers["x-user"] === "stream-user" && r.path === "/v1/chat/completions");
  assert.deepEqual(JSON.parse(seen.body).stream_options, { include_usage: true });
  const next = await openai.chat.completions.create(ask).withResponse();
  assert.equal(tokensLeft(next.response.headers), 24);
});

test("a client that asked for usage in its stream gets it, and it is counted", async () => {
  const openai = client("usage-user");
  const stream = await openai.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  let usage;
  for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
  assert.equal(usage?.total_tokens, 6);
  const next = await openai.chat.completions.create(ask).withResponse();
  assert.equal(tokensLeft(next.response.headers), 24);
});

test("over its token budget a client is refused with 429 before the request reaches the upstream", async () => {
  const openai = client("budget-user");
  // 30 tokens: five requests of 6 use it up exactly.
  for (let i = 0; i < 5; i++) await openai.chat.completions.create(i % 2 ? ask : { ...ask, stream: true }).then(async (r) => {
    if (Symbol.asyncIterator in r) for await (const _ of r);
  });
  const before = (await upstream.requests()).filter((r) => r.headers["x-user"] === "budget-user").length;
  const err = await openai.chat.completions.create(ask).then(
    () => assert.fail("expected a 429"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof OpenAI.RateLimitError, String(err));
  assert.equal(err.status, 429);
  assert.equal(err.code, "rate_limit_exceeded");
  assert.ok(Number(err.headers?.get("retry-after")) >= 1);
  const afterCount = (await upstream.requests()).filter((r) => r.headers["x-user"] === "budget-user").length;
  assert.equal(afterCount, before);
  // Another principal is unaffected.
  await client("someone-else").chat.completions.create(ask);
});
