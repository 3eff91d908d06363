import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { demoEmbedding } from "../../src/demo/upstream.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The official OpenAI client, through a real gateway process, in front of the
// demo upstream process, with the custom auth provider validating the key.

const TOKEN = "tok-alice-Zq81mV4xPw";

describe("the OpenAI client through the gateway", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;
  let client: OpenAI;

  before(async () => {
    upstream = await startUpstreamProcess();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "alice", attributes: { roles: ["user"] } } } });
    gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "custom", endpoint: auth.url } } },
        upstream: { url: upstream.url, principal_header: "x-tollgate-principal" },
      },
    });
    client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 10_000 });
  });

  after(async () => {
    await gateway?.close();
    await auth?.close();
    await upstream?.close();
  });

  test("models.list returns the upstream's models", { timeout: 10_000 }, async () => {
    const ids: string[] = [];
    for await (const model of client.models.list()) ids.push(model.id);
    assert.deepEqual(ids, ["demo-small", "demo-embed"]);
  });

  test("a chat completion comes back with the upstream's reply and usage", { timeout: 10_000 }, async () => {
    const completion = await client.chat.completions.create({
      model: "demo-small",
      messages: [{ role: "user", content: "hello gateway" }],
    });
    assert.equal(completion.object, "chat.completion");
    assert.equal(completion.choices[0]?.message.content, "You said: hello gateway");
    assert.deepEqual(completion.usage, { prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 });
  });

  test("a streamed chat completion reaches the client before the upstream has sent its last event", { timeout: 15_000 }, async () => {
    const id = randomUUID();
    const stream = await client.chat.completions.create(
      { model: "demo-small", stream: true, messages: [{ role: "user", content: "one two three four" }] },
      { headers: { "x-test-id": id, "x-demo-chunk-delay-ms": "150" } },
    );
    const contents: string[] = [];
    let upstreamDoneAtFirstChunk: boolean | undefined;
    for await (const chunk of stream) {
      const text = chunk.choices[0]?.delta.content;
      if (text) {
        if (upstreamDoneAtFirstChunk === undefined) {
          // At the first word, the upstream must still be streaming: nothing was buffered on the way.
          const record = await upstream.waitForRequest((r) => r.headers["x-test-id"] === id);
          upstreamDoneAtFirstChunk = record.completed;
        }
        contents.push(text);
      }
    }
    assert.equal(upstreamDoneAtFirstChunk, false);
    assert.equal(contents.join(""), "You said: one two three four");
    const record = await upstream.waitForRequest((r) => r.headers["x-test-id"] === id && r.completed);
    assert.equal(record.aborted, false);
  });

  test("stream_options.include_usage ends the stream with a usage chunk", { timeout: 10_000 }, async () => {
    const stream = await client.chat.completions.create({
      model: "demo-small",
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "count me" }],
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 });
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));
  });

  test("embeddings come back as the upstream's deterministic vectors", { timeout: 10_000 }, async () => {
    // The client asks for base64 by default and decodes it: the bytes crossed the gateway intact.
    const result = await client.embeddings.create({ model: "demo-embed", input: ["alpha", "beta"] });
    assert.equal(result.data.length, 2);
    for (const [i, input] of ["alpha", "beta"].entries()) {
      const expected = demoEmbedding(input);
      const got = result.data[i]!.embedding;
      assert.equal(got.length, expected.length);
      got.forEach((v, j) => assert.ok(Math.abs(v - expected[j]!) < 1e-6));
    }
    const floats = await client.embeddings.create({ model: "demo-embed", input: "alpha", encoding_format: "float" });
    assert.deepEqual(floats.data[0]!.embedding, demoEmbedding("alpha"));
  });

  test("legacy completions work", { timeout: 10_000 }, async () => {
    const completion = await client.completions.create({ model: "demo-small", prompt: "say this" });
    assert.equal(completion.choices[0]?.text, "You said: say this");
  });

  test("a wrong key surfaces as an AuthenticationError carrying the gateway's envelope", { timeout: 10_000 }, async () => {
    const wrong = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "tok-nobody", maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (err: unknown) => {
      assert.ok(err instanceof OpenAI.AuthenticationError);
      assert.equal(err.status, 401);
      assert.equal(err.code, "invalid_token");
      assert.equal(err.type, "authentication_error");
      return true;
    });
  });

  test("the upstream saw the principal, never the client's key", { timeout: 10_000 }, async () => {
    const models = await upstream.waitForRequest((r) => r.path === "/v1/models");
    assert.equal(models.headers["x-tollgate-principal"], "alice");
    assert.equal(models.headers.authorization, undefined);
  });

  test("the client's key never appears in the gateway's output", { timeout: 10_000 }, async () => {
    // Ask once more so that the log certainly holds request lines.
    await client.models.list();
    const output = gateway.stdout() + gateway.stderr();
    assert.ok(output.includes('"msg":"request"'));
    assert.deepEqual(linesContaining(output, TOKEN), []);
    assert.deepEqual(linesContaining(output, "tok-nobody"), []);
  });
});
