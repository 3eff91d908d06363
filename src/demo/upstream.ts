#!/usr/bin/env node
import { createHash, randomBytes } from "node:crypto";
import { realpathSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import zlib from "node:zlib";

/**
 * A small OpenAI-compatible server: enough of the API for `tollgate serve
 * --demo`, the README's tour and the end-to-end tests, with no model behind
 * it. Replies are deterministic: chat echoes the last user message, embeddings
 * are derived from a hash of the input.
 *
 * Routes: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}` (with
 * `ollama`, also Ollama's `GET /api/tags` and `GET /api/ps`),
 * `POST /v1/chat/completions` (SSE with `stream: true`), `POST /v1/completions`,
 * `POST /v1/embeddings`, files / vector stores / responses (create, list with
 * `after`/`limit` pagination, retrieve, delete; kept in memory), `/echo/*` (any method: answers what it received) and
 * `GET /_demo/requests` (the requests recorded so far, newest last). Any
 * route answers what it received when the request carries `x-demo-echo`: the
 * gateway forwards only declared routes, so tests look at forwarding through
 * real ones (`GET /api/version`, `POST /generate`).
 *
 * Request headers steer it, for tests: `x-demo-delay-ms` (wait before the
 * response headers), `x-demo-chunk-delay-ms` (wait between SSE events),
 * `x-demo-status` (answer this status with an OpenAI error body),
 * `x-demo-reset-after-chunks` (cut the connection after N SSE events),
 * `x-demo-wording: llama_stack` (a missing model, file, vector store or
 * response is a 404 worded as Llama Stack words it, and chat refuses a model
 * it does not serve, as a Llama Stack server in front of it would),
 * `x-demo-usage-delay-ms` (wait before a stream's usage chunk),
 * `x-demo-end-delay-ms` (wait before a stream's `data: [DONE]`),
 * `x-demo-pad-bytes` (a chat completion's JSON carries this many bytes of
 * padding before its `usage`), `x-demo-content-encoding` (the answer is
 * compressed so whatever the request accepts: gzip, deflate, br; any other
 * value only labels it), `x-demo-stream-tokens` (a chat stream carries this
 * many content events, the reply's words over and over, instead of the reply
 * once: with `x-demo-chunk-delay-ms: 50`, 400 of them last 20 s),
 * `x-demo-stamp: 1` (every SSE event carries `demo_sent_at`, the wall-clock
 * time in fractional milliseconds at which it was written, for the
 * benchmark's delay per token).
 *
 * It has no authentication and echoes headers back: never expose it.
 */

/** A request as the demo upstream received it. */
export interface DemoRequest {
  readonly id: number;
  readonly method: string;
  /** Path as received, without the query. */
  readonly path: string;
  /** Raw query string without `?`. */
  readonly query: string;
  /** Headers, names lower-case, repeated ones joined as Node joins them. */
  readonly headers: Record<string, string | string[] | undefined>;
  /** The body as text ("" for none). */
  body: string;
  /** True when the client went away before the response was complete. */
  aborted: boolean;
  /** True when the response was sent completely. */
  completed: boolean;
}

export interface DemoUpstreamOptions {
  /** Default 0: any free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Pause between SSE events when the request does not say (`x-demo-chunk-delay-ms`); default 0. */
  chunkDelayMs?: number;
  /** The models it lists and serves (`GET /v1/models`); default {@link DEMO_MODELS}. Several started with different lists stand for several model servers. */
  models?: readonly string[];
  /** Also list them as Ollama does (`GET /api/tags`, `GET /api/ps`); default false: those are 404, as on vLLM. */
  ollama?: boolean;
}

export interface DemoUpstream {
  /** Base URL, `http://127.0.0.1:PORT`. */
  readonly url: string;
  /** Requests received so far (the last {@link MAX_RECORDED}), oldest first. */
  readonly requests: readonly DemoRequest[];
  /** Stops listening and cuts open connections. */
  close(): Promise<void>;
}

/** How many requests the demo upstream remembers. */
export const MAX_RECORDED = 500;

/** The models the demo upstream serves. */
export const DEMO_MODELS = ["demo-small", "demo-embed"] as const;

const CREATED = 1_700_000_000;

function sleep(ms: number, res: ServerResponse): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    res.once("close", done);
    function done() {
      clearTimeout(timer);
      res.off("close", done);
      resolve();
    }
  });
}

function numberHeader(req: IncomingMessage, name: string): number | undefined {
  const value = req.headers[name];
  if (typeof value !== "string") return undefined;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.destroyed) return;
  const encoding = contentEncoding(res.req);
  const text = Buffer.from(JSON.stringify(body));
  const bytes = encoding ? (COMPRESS[encoding]?.(text) ?? text) : text;
  res.writeHead(status, { "content-type": "application/json", "content-length": bytes.length, ...(encoding ? { "content-encoding": encoding } : {}) });
  res.end(bytes);
}

/** The codings `x-demo-content-encoding` applies (another value only labels the answer). */
const COMPRESS: Record<string, (bytes: Buffer) => Buffer> = { gzip: zlib.gzipSync, deflate: zlib.deflateSync, br: zlib.brotliCompressSync };
const COMPRESS_STREAM: Record<string, () => zlib.Gzip | zlib.Deflate | zlib.BrotliCompress> = { gzip: zlib.createGzip, deflate: zlib.createDeflate, br: zlib.createBrotliCompress };

function contentEncoding(req: IncomingMessage): string | undefined {
  const value = req.headers["x-demo-content-encoding"];
  return typeof value === "string" && value !== "" ? value : undefined;
}

function sendError(res: ServerResponse, status: number, message: string, code: string, type = "invalid_request_error"): void {
  sendJson(res, status, { error: { message, type, param: null, code } });
}

function words(text: string): string[] {
  return text.split(/\s+/).filter(Boolean);
}

/** Text content of a chat message (string, or the text parts of a content array). */
function messageText(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (part && typeof part === "object" && typeof (part as { text?: unknown }).text === "string" ? (part as { text: string }).text : ""))
      .join(" ");
  }
  return "";
}

/** A deterministic unit vector for `text`: the same input always embeds the same. */
export function demoEmbedding(text: string, dimensions = 8): number[] {
  const vector: number[] = [];
  let block = createHash("sha256").update(text).digest();
  while (vector.length < dimensions) {
    for (let i = 0; i + 1 < block.length && vector.length < dimensions; i += 2) {
      vector.push(block.readUInt16BE(i) / 65535 - 0.5);
    }
    block = createHash("sha256").update(block).digest();
  }
  const norm = Math.hypot(...vector) || 1;
  return vector.map((v) => v / norm);
}

function asFloat32Base64(vector: number[]): string {
  return Buffer.from(new Float32Array(vector).buffer).toString("base64");
}

function parseJsonBody(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function llamaStackWording(req: IncomingMessage): boolean {
  return req.headers["x-demo-wording"] === "llama_stack";
}

/** Llama Stack's not-found message for a missing object of a collection. */
function llamaStackNotFound(kind: "models" | "files" | "vector_stores" | "responses", id: string): string {
  const [label, list] = {
    models: ["Model", "models"],
    files: ["File", "files"],
    vector_stores: ["Vector Store", "vector_dbs"],
    responses: ["Response", "responses"],
  }[kind];
  return `${label} '${id}' not found. Use 'client.${list}.list()' to list available ${label}s.`;
}

/** Starts the demo upstream; see the module comment for what it serves. */
export async function startDemoUpstream(options: DemoUpstreamOptions = {}): Promise<DemoUpstream> {
  const { port = 0, host = "127.0.0.1", chunkDelayMs = 0, models = DEMO_MODELS, ollama = false } = options;
  const requests: DemoRequest[] = [];
  let nextId = 1;
  let sequence = 0;

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://demo.invalid");
    const q = (req.url ?? "").indexOf("?");
    const record: DemoRequest = {
      id: nextId++,
      method: req.method ?? "GET",
      path: url.pathname,
      query: q === -1 ? "" : (req.url ?? "").slice(q + 1),
      headers: { ...req.headers },
      body: "",
      aborted: false,
      completed: false,
    };
    requests.push(record);
    if (requests.length > MAX_RECORDED) requests.shift();
    res.once("close", () => {
      if (res.writableFinished) record.completed = true;
      else record.aborted = true;
    });

    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("error", () => res.destroy());
    req.on("end", () => {
      record.body = Buffer.concat(chunks).toString("utf8");
      handle(req, res, record).catch(() => res.destroy());
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, record: DemoRequest): Promise<void> {
    await sleep(numberHeader(req, "x-demo-delay-ms") ?? 0, res);
    if (res.destroyed) return;
    const status = numberHeader(req, "x-demo-status");
    if (status !== undefined && status >= 200 && status <= 599 && record.path !== "/_demo/requests") {
      sendError(res, status, `demo upstream answered ${status} as asked`, "demo_status", "demo_error");
      return;
    }
    const { method, path } = record;

    if (path === "/echo" || path.startsWith("/echo/") || req.headers["x-demo-echo"] !== undefined) {
      sendJson(res, 200, { method, path, query: record.query, headers: record.headers, body: record.body });
      return;
    }
    if (method === "GET" && path === "/_demo/requests") {
      sendJson(res, 200, { data: requests.filter((r) => r !== record) });
      return;
    }
    if (method === "GET" && (path === "/health" || path === "/v1/health")) {
      sendJson(res, 200, { status: "OK" });
      return;
    }
    if (method === "GET" && path === "/v1/models") {
      sendJson(res, 200, { object: "list", data: models.map(model) });
      return;
    }
    if (ollama && method === "GET" && (path === "/api/tags" || path === "/api/ps")) {
      sendJson(res, 200, { models: models.map(ollamaModel) });
      return;
    }
    if (method === "GET" && path.startsWith("/v1/models/")) {
      const id = decodeURIComponent(path.slice("/v1/models/".length));
      if (models.includes(id)) sendJson(res, 200, model(id));
      else if (llamaStackWording(req)) sendError(res, 404, llamaStackNotFound("models", id), "model_not_found", "not_found_error");
      else sendError(res, 404, `The model '${id}' does not exist`, "model_not_found");
      return;
    }
    if (method === "POST" && path === "/v1/chat/completions" && llamaStackWording(req)) {
      const requested = parseJsonBody(record.body)?.model;
      if (typeof requested === "string" && !models.includes(requested)) {
        sendError(res, 404, llamaStackNotFound("models", requested), "model_not_found", "not_found_error");
        return;
      }
    }
    if (method === "POST" && path === "/v1/chat/completions") return chat(req, res, record);
    if (method === "POST" && path === "/v1/completions") return completion(req, res, record);
    if (method === "POST" && path === "/v1/embeddings") return embeddings(res, record);
    if (await storedObjects(req, res, record)) return;
    sendError(res, 404, `Unknown route ${method} ${path}`, "unknown_route");
  }

  // Files, vector stores and responses, kept in memory: create, list
  // (cursor pagination: `after`, `limit`, answering `has_more`, `first_id`,
  // `last_id`), retrieve, delete. Enough for the access-policy tests.
  const stores = { files: new Map<string, Record<string, unknown>>(), vector_stores: new Map<string, Record<string, unknown>>(), responses: new Map<string, Record<string, unknown>>() };
  const ID_PREFIX = { files: "file-", vector_stores: "vs_", responses: "resp_" } as const;
  let objectSequence = 0;
  // Ids unique across processes, as real servers' are: several demo upstreams behind one gateway never hand out the same one.
  const instance = randomBytes(3).toString("hex");

  async function storedObjects(req: IncomingMessage, res: ServerResponse, record: DemoRequest): Promise<boolean> {
    const match = /^\/v1\/(files|vector_stores|responses)(?:\/([^/]+))?(\/content)?$/.exec(record.path);
    if (!match) return false;
    const kind = match[1] as keyof typeof stores;
    const id = match[2];
    const store = stores[kind];
    const { method } = record;
    if (id === undefined && method === "POST") {
      const created = await createObject(kind, req, record);
      if (!created) sendError(res, 400, "invalid request body", "invalid_body");
      else if (kind === "responses" && parseJsonBody(record.body)?.stream === true) {
        // The Responses API's stream: the id arrives in the first event.
        store.set(created.id as string, created);
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        const events = [
          { type: "response.created", sequence_number: 0, response: { ...created, status: "in_progress", output: [] } },
          { type: "response.completed", sequence_number: 1, response: created },
        ];
        for (const event of events) res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
        res.end();
      } else {
        store.set(created.id as string, created);
        sendJson(res, 200, created);
      }
      return true;
    }
    if (id === undefined && method === "GET" && kind !== "responses") {
      const params = new URLSearchParams(record.query);
      const limit = Math.max(1, Math.min(100, Number(params.get("limit") ?? 20) || 20));
      const all = [...store.values()];
      const after = params.get("after");
      const start = after ? all.findIndex((o) => o.id === after) + 1 : 0;
      const data = all.slice(start, start + limit);
      sendJson(res, 200, { object: "list", data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: start + limit < all.length });
      return true;
    }
    const found = id === undefined ? undefined : store.get(id);
    if (!found) {
      if (llamaStackWording(req) && id !== undefined) sendError(res, 404, llamaStackNotFound(kind, id), "not_found", "not_found_error");
      else sendError(res, 404, `No such object: ${id ?? ""}`, "not_found");
      return true;
    }
    if (method === "GET" && match[3]) {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.end(String(found.content ?? ""));
    } else if (method === "GET") {
      const { content: _content, ...visible } = found;
      sendJson(res, 200, visible);
    } else if (method === "DELETE") {
      store.delete(found.id as string);
      sendJson(res, 200, { id: found.id, object: kind === "files" ? "file" : kind === "vector_stores" ? "vector_store.deleted" : "response", deleted: true });
    } else {
      sendError(res, 405, `${method} not supported here`, "method_not_allowed");
    }
    return true;
  }

  async function createObject(kind: keyof typeof stores, req: IncomingMessage, record: DemoRequest): Promise<Record<string, unknown> | undefined> {
    const id = `${ID_PREFIX[kind]}${instance}${String(++objectSequence).padStart(6, "0")}`;
    if (kind === "files") {
      const contentType = req.headers["content-type"] ?? "";
      if (!contentType.startsWith("multipart/form-data")) return undefined;
      const form = await new Response(Buffer.from(record.body, "utf8"), { headers: { "content-type": contentType } }).formData().catch(() => undefined);
      const file = form?.get("file");
      if (!form || !file || typeof file === "string") return undefined;
      const content = await file.text();
      return { id, object: "file", bytes: Buffer.byteLength(content), created_at: CREATED, filename: file.name, purpose: String(form.get("purpose") ?? "assistants"), status: "processed", content };
    }
    const body = parseJsonBody(record.body);
    if (!body) return undefined;
    if (kind === "vector_stores") {
      return { id, object: "vector_store", created_at: CREATED, name: typeof body.name === "string" ? body.name : null, usage_bytes: 0, file_counts: { in_progress: 0, completed: 0, failed: 0, cancelled: 0, total: 0 }, status: "completed", metadata: null, last_active_at: CREATED, expires_at: null };
    }
    const input = typeof body.input === "string" ? body.input : "";
    const text = `You said: ${input}`;
    return {
      id,
      object: "response",
      created_at: CREATED,
      model: body.model,
      status: "completed",
      output: [{ type: "message", id: `msg_${objectSequence}`, role: "assistant", status: "completed", content: [{ type: "output_text", text, annotations: [] }] }],
      usage: { input_tokens: words(input).length, output_tokens: words(text).length, total_tokens: words(input).length + words(text).length },
    };
  }

  function model(id: string) {
    return { id, object: "model", created: CREATED, owned_by: "tollgate-demo" };
  }

  /** An entry of Ollama's model lists (docs/api.md): named twice, `name` and `model`. */
  function ollamaModel(name: string) {
    const digest = createHash("sha256").update(name).digest("hex");
    return { name, model: name, modified_at: new Date(CREATED * 1000).toISOString(), size: 1_000_000, digest, details: { format: "gguf", family: "demo" } };
  }

  function requestBody(res: ServerResponse, record: DemoRequest): Record<string, unknown> | undefined {
    const body = parseJsonBody(record.body);
    if (!body) sendError(res, 400, "We could not parse the JSON body of your request.", "invalid_json");
    else if (typeof body.model !== "string" || body.model === "") {
      sendError(res, 400, "you must provide a model parameter", "missing_model");
      return undefined;
    }
    return body;
  }

  async function chat(req: IncomingMessage, res: ServerResponse, record: DemoRequest): Promise<void> {
    const body = requestBody(res, record);
    if (!body) return;
    const messages = Array.isArray(body.messages) ? (body.messages as { role?: unknown; content?: unknown }[]) : [];
    const lastUser = [...messages].reverse().find((m) => m && m.role === "user");
    const reply = `You said: ${messageText(lastUser?.content) || "(nothing)"}`;
    const promptTokens = messages.reduce((n, m) => n + words(messageText(m?.content)).length, 0);
    const usage = usageOf(promptTokens, words(reply).length);
    const id = `chatcmpl-demo-${++sequence}`;
    const modelId = body.model as string;

    if (body.stream !== true) {
      const padding = numberHeader(req, "x-demo-pad-bytes");
      sendJson(res, 200, {
        id,
        object: "chat.completion",
        created: CREATED,
        model: modelId,
        choices: [{ index: 0, message: { role: "assistant", content: reply, refusal: null }, logprobs: null, finish_reason: "stop" }],
        ...(padding ? { demo_padding: "x".repeat(padding) } : {}),
        usage,
      });
      return;
    }
    const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
    const object = "chat.completion.chunk";
    // One object shape per kind of stream (no spread per chunk): the bench's upstream shares the machine with the gateway it measures.
    const choices = (delta: Record<string, unknown>, finish: string | null) => [{ index: 0, delta, logprobs: null, finish_reason: finish }];
    const chunk = includeUsage
      ? (delta: Record<string, unknown>, finish: string | null) => ({ id, object, created: CREATED, model: modelId, system_fingerprint: null, choices: choices(delta, finish), usage: null })
      : (delta: Record<string, unknown>, finish: string | null) => ({ id, object, created: CREATED, model: modelId, system_fingerprint: null, choices: choices(delta, finish) });
    const events: unknown[] = [chunk({ role: "assistant", content: "", refusal: null }, null)];
    const replyWords = words(reply);
    const contentEvents = numberHeader(req, "x-demo-stream-tokens") ?? replyWords.length;
    for (let i = 0; i < contentEvents; i++) {
      const word = replyWords[i % replyWords.length] ?? "";
      events.push(chunk({ content: i === 0 ? word : ` ${word}` }, null));
    }
    events.push(chunk({}, "stop"));
    if (includeUsage) events.push({ id, object, created: CREATED, model: modelId, system_fingerprint: null, choices: [], usage });
    await streamEvents(req, res, events);
  }

  async function completion(req: IncomingMessage, res: ServerResponse, record: DemoRequest): Promise<void> {
    const body = requestBody(res, record);
    if (!body) return;
    const prompt = Array.isArray(body.prompt) ? body.prompt.map(String).join(" ") : typeof body.prompt === "string" ? body.prompt : "";
    const text = `You said: ${prompt || "(nothing)"}`;
    const id = `cmpl-demo-${++sequence}`;
    const base = { id, object: "text_completion", created: CREATED, model: body.model as string };
    const usage = usageOf(words(prompt).length, words(text).length);
    if (body.stream !== true) {
      sendJson(res, 200, { ...base, choices: [{ index: 0, text, logprobs: null, finish_reason: "stop" }], usage });
      return;
    }
    const events: unknown[] = words(text).map((word, i) => ({
      ...base,
      choices: [{ index: 0, text: i === 0 ? word : ` ${word}`, logprobs: null, finish_reason: null }],
    }));
    events.push({ ...base, choices: [{ index: 0, text: "", logprobs: null, finish_reason: "stop" }] });
    if ((body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true) {
      events.push({ ...base, choices: [], usage });
    }
    await streamEvents(req, res, events);
  }

  function embeddings(res: ServerResponse, record: DemoRequest): void {
    const body = requestBody(res, record);
    if (!body) return;
    const inputs = Array.isArray(body.input) ? body.input.map((v) => (typeof v === "string" ? v : JSON.stringify(v))) : [String(body.input ?? "")];
    const dimensions = typeof body.dimensions === "number" && body.dimensions > 0 && body.dimensions <= 4096 ? body.dimensions : 8;
    const base64 = body.encoding_format === "base64";
    sendJson(res, 200, {
      object: "list",
      data: inputs.map((input, index) => {
        const vector = demoEmbedding(input, dimensions);
        return { object: "embedding", index, embedding: base64 ? asFloat32Base64(vector) : vector };
      }),
      model: body.model,
      usage: { prompt_tokens: inputs.reduce((n, s) => n + words(s).length, 0), total_tokens: inputs.reduce((n, s) => n + words(s).length, 0) },
    });
  }

  function usageOf(prompt: number, completionTokens: number) {
    return { prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens };
  }

  /** Server-sent events in OpenAI's wire format: `data: <json>\n\n` each, then `data: [DONE]`. */
  async function streamEvents(req: IncomingMessage, res: ServerResponse, events: unknown[]): Promise<void> {
    const delay = numberHeader(req, "x-demo-chunk-delay-ms") ?? chunkDelayMs;
    const resetAfter = numberHeader(req, "x-demo-reset-after-chunks");
    const usageDelay = numberHeader(req, "x-demo-usage-delay-ms") ?? 0;
    const endDelay = numberHeader(req, "x-demo-end-delay-ms") ?? 0;
    const stamp = req.headers["x-demo-stamp"] === "1";
    const encoding = contentEncoding(req);
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", ...(encoding ? { "content-encoding": encoding } : {}) });
    res.flushHeaders();
    // A compressed stream is flushed event by event, as servers that compress streams do.
    const compressor = encoding ? COMPRESS_STREAM[encoding]?.() : undefined;
    compressor?.pipe(res);
    const write = (text: string) => {
      if (!compressor) return void res.write(text);
      compressor.write(text);
      compressor.flush();
    };
    for (let i = 0; i < events.length; i++) {
      if (res.destroyed) return;
      if (resetAfter !== undefined && i >= resetAfter) {
        res.socket?.destroy();
        return;
      }
      if (i > 0) await sleep(delay, res);
      if (usageDelay > 0 && (events[i] as { usage?: unknown }).usage) await sleep(usageDelay, res);
      if (res.destroyed) return;
      // The stamp is taken as the event is written: what a client receives later is delay on the way.
      const event = stamp ? { ...(events[i] as object), demo_sent_at: performance.timeOrigin + performance.now() } : events[i];
      write(`data: ${JSON.stringify(event)}\n\n`);
    }
    if (delay + endDelay > 0) await sleep(delay + endDelay, res);
    if (res.destroyed) return;
    if (compressor) compressor.end("data: [DONE]\n\n");
    else res.end("data: [DONE]\n\n");
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const urlHost = address.family === "IPv6" ? `[${address.address}]` : address.address;

  return {
    url: `http://${urlHost}:${address.port}`,
    requests,
    close() {
      return new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/**
 * `node dist/demo/upstream.js [--port N] [--host H] [--chunk-delay-ms N] [--models a,b] [--ollama]`:
 * prints the base URL alone on the first line of stdout once it listens;
 * exits 0 on SIGTERM / SIGINT.
 */
export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      "chunk-delay-ms": { type: "string", default: "0" },
      models: { type: "string" },
      ollama: { type: "boolean", default: false },
    },
  });
  const upstream = await startDemoUpstream({
    port: Number(values.port),
    host: values.host,
    chunkDelayMs: Number(values["chunk-delay-ms"]),
    ...(values.models !== undefined ? { models: values.models.split(",").filter((m) => m !== "") } : {}),
    ollama: values.ollama,
  });
  process.stdout.write(`${upstream.url}\n`);
  const stop = () => {
    void upstream.close().then(() => process.exit(0));
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  main().catch((err: unknown) => {
    process.stderr.write(`demo upstream: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
