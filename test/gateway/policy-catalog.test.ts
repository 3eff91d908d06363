import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { describe, test } from "node:test";
import { PayloadTooLargeError } from "../../src/core/errors.js";
import { routeMatchPath } from "../../src/core/policy/routes.js";
import { createCatalog } from "../../src/gateway/catalog.js";
import { formField, jsonMember, readJsonBody, withBodyLength, withJsonMember, type BufferedBody } from "../../src/gateway/request-body.js";

const catalog = createCatalog({ presets: ["openai", "llama_stack", "vllm", "ollama", "tgi"], routes: [{ method: "GET", path: "/v1/widgets/{id}/*", type: "widget", action: "read" }] });
const match = (method: string, path: string) => {
  const m = catalog.match(method, routeMatchPath(path), path);
  return m && { type: m.type, action: m.action, id: m.pathId, body: m.bodyFields?.join("|"), response: m.responseField };
};

describe("the resource catalog", () => {
  test("inference routes read the model named in the body", () => {
    for (const p of ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions", "/v1/images/generations", "/v1/moderations"]) {
      assert.deepEqual(match("POST", p), { type: "model", action: "read", id: undefined, body: "model", response: undefined }, p);
    }
  });
  test("models: list, read (ids may contain /), and Llama Stack's register", () => {
    assert.equal(match("GET", "/v1/models")?.action, "list");
    assert.deepEqual(match("GET", "/v1/models/meta-llama/Llama-3-8B")?.id, "meta-llama/Llama-3-8B");
    assert.deepEqual(match("POST", "/v1/models"), { type: "model", action: "create", id: undefined, body: undefined, response: "identifier" });
  });
  test("owned resources: create, list, read, sub-routes, delete", () => {
    assert.deepEqual(match("POST", "/v1/files"), { type: "file", action: "create", id: undefined, body: undefined, response: "id" });
    assert.equal(match("GET", "/v1/files")?.action, "list");
    assert.deepEqual(match("GET", "/v1/files/file-AbC")?.id, "file-AbC");
    assert.deepEqual(match("GET", "/v1/files/file-AbC/content"), { type: "file", action: "read", id: "file-AbC", body: undefined, response: undefined });
    assert.equal(match("DELETE", "/v1/files/file-1")?.action, "delete");
    assert.equal(match("POST", "/v1/vector_stores/vs_1/files")?.action, "update");
    assert.equal(match("DELETE", "/v1/vector_stores/vs_1/files/file-1")?.action, "update");
    assert.equal(match("GET", "/v1/fine_tuning/jobs/ftjob-1/events")?.type, "fine_tuning_job");
    assert.equal(match("POST", "/v1/batches/batch_1/cancel")?.action, "update");
    assert.equal(match("GET", "/v1/openai/v1/files/f1")?.type, "file");
  });
  test("HEAD is a GET", () => assert.equal(match("HEAD", "/v1/files/f1")?.action, "read"));
  test("case variants match the same entry, and the id keeps its case", () => {
    assert.deepEqual(match("GET", "/V1/Files/file-AbC/Content")?.id, "file-AbC");
    assert.equal(match("DELETE", "/v1/FILES/f1")?.action, "delete");
  });
  test("config routes come first", () => assert.deepEqual(match("GET", "/v1/widgets/w1/parts")?.type, "widget"));
  test("every method on an owned resource is checked: GET read, DELETE delete, POST/PUT/PATCH update", () => {
    for (const base of ["/v1/files/f1", "/v1/vector_stores/vs_1", "/v1/chat/completions/chatcmpl-1", "/v1/assistants/asst_1", "/v1/threads/thread_1", "/v1/openai/v1/files/f1"]) {
      assert.equal(match("GET", base)?.action, "read", base);
      assert.equal(match("DELETE", base)?.action, "delete", base);
      for (const method of ["POST", "PUT", "PATCH"]) assert.equal(match(method, base)?.action, "update", `${method} ${base}`);
    }
  });
  test("issue 19: stored chat completions, assistants and threads are owned resources", () => {
    assert.deepEqual(match("POST", "/v1/chat/completions"), { type: "model", action: "read", id: undefined, body: "model", response: undefined });
    assert.equal(catalog.match("POST", "/v1/chat/completions", "/v1/chat/completions")?.entry.stores, "chat_completion");
    assert.deepEqual(match("GET", "/v1/chat/completions"), { type: "chat_completion", action: "list", id: undefined, body: undefined, response: undefined });
    assert.deepEqual(match("GET", "/v1/chat/completions/chatcmpl-1/messages")?.id, "chatcmpl-1");
    assert.equal(match("GET", "/v1/openai/v1/chat/completions/c1")?.type, "chat_completion");
    assert.deepEqual(match("POST", "/v1/assistants"), { type: "assistant", action: "create", id: undefined, body: undefined, response: "id" });
    assert.deepEqual(match("POST", "/v1/threads/runs"), { type: "thread", action: "create", id: undefined, body: undefined, response: "thread_id" });
    assert.deepEqual(match("POST", "/v1/threads/t1/runs"), { type: "thread", action: "update", id: "t1", body: undefined, response: undefined });
    assert.equal(match("GET", "/v1/threads/t1/runs/r1/steps")?.action, "read");
  });
  test("native APIs name their model: vLLM, Ollama (model or name), and model-changing routes create or delete", () => {
    for (const p of ["/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/invocations"]) {
      assert.deepEqual(match("POST", p), { type: "model", action: "read", id: undefined, body: "model", response: undefined }, p);
    }
    for (const p of ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]) {
      assert.deepEqual(match("POST", p), { type: "model", action: "read", id: undefined, body: "model|name", response: undefined }, p);
    }
    assert.deepEqual(match("POST", "/api/pull"), { type: "model", action: "create", id: undefined, body: "model|name", response: undefined });
    assert.deepEqual(match("DELETE", "/api/delete"), { type: "model", action: "delete", id: undefined, body: "model|name", response: undefined });
    assert.deepEqual(match("POST", "/api/copy"), { type: "model", action: "create", id: undefined, body: "destination", response: undefined });
    assert.deepEqual(match("GET", "/api/tags")?.action, "list");
    assert.deepEqual(match("POST", "/generate")?.action, "forward");
  });
  test("undeclared routes are in no catalog entry", () => {
    assert.equal(match("GET", "/v1/unknown"), undefined);
    assert.equal(match("GET", "/v1/filesx/f1"), undefined);
    // Admin and debug endpoints of the servers are deliberately left out (docs/routes.md).
    for (const p of ["/reset_prefix_cache", "/sleep", "/wake_up", "/collective_rpc", "/start_profile", "/api/signout", "/api/me", "/metrics"]) {
      assert.equal(match("POST", p), undefined, p);
      assert.equal(match("GET", p), undefined, p);
    }
  });
  test("methods lists what a path declares, HEAD with GET", () => {
    assert.deepEqual(catalog.methods("/v1/files/f1"), ["DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"]);
    assert.deepEqual(catalog.methods("/v1/chat/completions"), ["GET", "HEAD", "POST"]);
    assert.deepEqual(catalog.methods("/v1/unknown"), []);
  });
  test("presets can be turned off", () => {
    const none = createCatalog({ presets: [], routes: [] });
    assert.equal(none.match("GET", "/v1/files/f1", "/v1/files/f1"), undefined);
  });
});

describe("request-body", () => {
  const stream = (text: string, contentType?: string) => Object.assign(Readable.from([Buffer.from(text)]), { headers: contentType ? { "content-type": contentType } : {} });
  const limit = (maxBytes: number) => ({ maxBytes, idleMs: 60_000 });
  const text = (body: BufferedBody) => Buffer.concat(body.parts).toString();

  test("reads a JSON body and parses the members asked for", async () => {
    const body = await readJsonBody(stream('{"model":"m","x":1}', "application/json; charset=utf-8"), limit(1000));
    assert.equal(body.json?.valid, true);
    assert.equal(jsonMember(body, "model"), "m");
    assert.equal(jsonMember(body, "x"), 1);
    assert.equal(text(body), '{"model":"m","x":1}');
    assert.equal(body.contentType, "application/json");
  });
  test("a body over the limit is a 413", async () => {
    await assert.rejects(readJsonBody(stream("x".repeat(11)), limit(10)), PayloadTooLargeError);
  });
  test("invalid JSON or another type is kept as bytes with no member", async () => {
    const invalid = await readJsonBody(stream('{"model":"m"', "application/json"), limit(100));
    assert.equal(invalid.json?.valid, false);
    assert.equal(jsonMember(invalid, "model"), undefined);
    assert.equal((await readJsonBody(stream("{}", "text/plain"), limit(100))).json, undefined);
  });
  test("a rewrite splices the member in; untouched bodies keep their bytes", async () => {
    const body = await readJsonBody(stream('{ "model" : "m" }'), limit(100));
    const rewritten = withJsonMember(body, "stream_options", { include_usage: true });
    assert.equal(text(rewritten), '{"stream_options":{"include_usage":true}, "model" : "m" }');
    assert.equal(rewritten.length, Buffer.byteLength(text(rewritten)));
    assert.equal(text(body), '{ "model" : "m" }');
    const replaced = withJsonMember(await readJsonBody(stream('{"stream_options":{"x":1},"model":"m"}'), limit(100)), "stream_options", { x: 1, include_usage: true });
    assert.deepEqual(JSON.parse(text(replaced)), { stream_options: { x: 1, include_usage: true }, model: "m" });
    assert.equal(text(withJsonMember(await readJsonBody(stream("{}"), limit(100)), "a", 1)), '{"a":1}');
  });
  test("withBodyLength sets Content-Length and drops Transfer-Encoding", () => {
    assert.deepEqual(withBodyLength(["Content-Length", "5", "transfer-encoding", "chunked", "x", "y"], 9), ["x", "y", "content-length", "9"]);
  });
  test("formField reads a multipart field and refuses duplicates", async () => {
    const form = new FormData();
    form.append("model", "whisper-1");
    form.append("file", new Blob(["abc"]), "a.wav");
    const req = new Request("http://x/", { method: "POST", body: form });
    const ct = req.headers.get("content-type")!;
    const body = await readJsonBody(stream(Buffer.from(await req.arrayBuffer()).toString("latin1"), ct), limit(10_000));
    assert.equal(await formField(body, ct, "model"), "whisper-1");
    const twice = new FormData();
    twice.append("model", "a");
    twice.append("model", "b");
    const req2 = new Request("http://x/", { method: "POST", body: twice });
    const ct2 = req2.headers.get("content-type")!;
    const body2 = await readJsonBody(stream(Buffer.from(await req2.arrayBuffer()).toString("latin1"), ct2), limit(10_000));
    await assert.rejects(formField(body2, ct2, "model"), /Duplicate form field/);
  });
});
