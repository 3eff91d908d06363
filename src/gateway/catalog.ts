import type { Config } from "../core/config/schema.js";
import type { Action } from "../core/policy/compile.js";

/**
 * The route catalog: every route the gateway forwards, and which resource
 * each touches, declared as data. Each entry maps a method and a path
 * template to a resource type, an action and where the resource's identifier
 * is. Presets cover the APIs of OpenAI, Llama Stack, vLLM, Ollama and TGI
 * (docs/routes.md lists them with their sources); `server.resources.routes`
 * adds entries, tried before the presets. The first entry that matches
 * decides; a request no entry matches is not forwarded
 * (`server.resources.unlisted: deny`, the default).
 *
 * Templates: literal segments match case-insensitively (as route rules do,
 * see `routeMatchPath`); `{id}` takes one segment (its original case) as the
 * identifier; `{id+}` takes the rest of the path (model ids such as
 * `meta-llama/Llama-3-8B` contain `/`); a trailing `/*` matches the entry's
 * path and anything below it (sub-routes such as `/v1/files/{id}/content`).
 */

/**
 * What a request does to a resource: the four actions, `list` (the response
 * is filtered), or `forward` (a declared route that touches no resource, such
 * as a server's version: authentication and the route policy apply).
 */
export type CatalogAction = Action | "list" | "forward";

/** Another resource a request names in its body: a read of it is checked too (the model of a response, the assistant of a run). */
export interface BodyRead {
  readonly type: string;
  /** The body field; a string, or an object whose `id` is one (`conversation: {id}`). */
  readonly field: string;
  /** Absent field: nothing to check (else 400). */
  readonly optional?: boolean;
}

/** One catalog entry, as in `server.resources.routes` (the optional fields after `optional` are the presets' own). */
export interface CatalogEntry {
  readonly method: string;
  readonly path: string;
  readonly type: string;
  readonly action: CatalogAction;
  /**
   * `path` ({id} in the template), `body.<field>` (JSON or form field;
   * `body.model|name` takes the first present of several names),
   * `response.id` / `response.<field>` (create). Default: by action.
   */
  readonly id?: string | undefined;
  /** For `body.<field>`: forward unchecked when the field is absent (the upstream's default applies); else 400. */
  readonly optional?: boolean | undefined;
  /** More resources named in the body, each checked as a read. */
  readonly reads?: readonly BodyRead[] | undefined;
  /** A model read whose answer may be stored (`store: true` in the body): the type whose owner is recorded from the answer's id. */
  readonly stores?: string | undefined;
  /** A list whose answer is not OpenAI's `{data: [{id}]}`: the array field and the field naming each item (Ollama's `{models: [{name}]}`). */
  readonly items?: { readonly field: string; readonly id: string } | undefined;
  /** A create or delete whose id is in the request: whether the owner is recorded / forgotten after it (default true). */
  readonly record?: boolean | undefined;
}

/** A request matched to an entry. */
export interface CatalogMatch {
  readonly entry: CatalogEntry;
  readonly type: string;
  readonly action: CatalogAction;
  /** The identifier from the path, when the entry's id is `path`. */
  readonly pathId: string | undefined;
  /** `body.<field>`: the field's names, first present wins; undefined otherwise. */
  readonly bodyFields: readonly string[] | undefined;
  /** `response.<field>` for creates: the field holding the new id. */
  readonly responseField: string | undefined;
}

interface CompiledEntry {
  readonly entry: CatalogEntry;
  readonly method: string;
  /** Lower-case literal segments; "{id}" / "{id+}" markers. */
  readonly segments: readonly string[];
  readonly deep: boolean;
}

type Entry = CatalogEntry;
type More = Partial<Omit<Entry, "method" | "path" | "type" | "action">>;

const entry = (method: string, path: string, type: string, action: CatalogAction, more: More = {}): Entry => ({ method, path, type, action, ...more });
/** A declared route that touches no resource. */
const forward = (method: string, path: string): Entry => entry(method, path, "route", "forward");
/** A route whose body names the model it runs: a read of `model::<id>`. */
const modelRead = (path: string, more: More = {}): Entry => entry("POST", path, "model", "read", { id: "body.model", ...more });

/** Methods that change an owned resource without deleting it: every method but GET/HEAD (read), DELETE and OPTIONS. */
const UPDATE_METHODS = ["POST", "PUT", "PATCH"] as const;

/**
 * An owned resource collection under `base`: create (owner recorded from the
 * answer), list (filtered), and every method on `{id}` and below it checked:
 * GET/HEAD read, DELETE of the resource delete, DELETE of something inside it
 * (a file of a vector store) and any other method update.
 */
function owned(base: string, type: string, create: More | false = {}): Entry[] {
  const entries: Entry[] = [];
  if (create !== false) entries.push(entry("POST", base, type, "create", { id: "response.id", ...create }));
  entries.push(entry("GET", base, type, "list"));
  entries.push(entry("GET", `${base}/{id}/*`, type, "read"));
  entries.push(entry("DELETE", `${base}/{id}`, type, "delete"));
  entries.push(entry("DELETE", `${base}/{id}/*`, type, "update"));
  for (const method of UPDATE_METHODS) entries.push(entry(method, `${base}/{id}/*`, type, "update"));
  return entries;
}

const MODEL = { type: "model", field: "model" } as const;
const OPTIONAL_MODEL = { ...MODEL, optional: true } as const;

/** Models: list (filtered), read, delete (OpenAI deletes fine-tuned models). */
function models(prefix: string): Entry[] {
  return [
    entry("GET", `${prefix}/models`, "model", "list"),
    entry("GET", `${prefix}/models/{id+}`, "model", "read"),
    entry("DELETE", `${prefix}/models/{id+}`, "model", "delete"),
  ];
}

/**
 * Chat completions: a read of the model; with `store: true` the answer is a
 * stored chat completion, owned by its creator (OpenAI's
 * /chat/completions/{id}, /messages; issue 19).
 */
function chatCompletions(prefix: string): Entry[] {
  return [modelRead(`${prefix}/chat/completions`, { stores: "chat_completion" }), ...owned(`${prefix}/chat/completions`, "chat_completion", false)];
}

/** Responses: a create that also reads its model, the response it continues and its conversation. */
function responses(prefix: string): Entry[] {
  return [
    // Counting a request's tokens reads its model; declared before `{id}` would take "input_tokens" as an id.
    modelRead(`${prefix}/responses/input_tokens`, { optional: true }),
    ...owned(`${prefix}/responses`, "response", {
      reads: [MODEL, { type: "response", field: "previous_response_id", optional: true }, { type: "conversation", field: "conversation", optional: true }],
    }),
  ];
}

/** The OpenAI-compatible surface Llama Stack serves (under /v1 and, in older releases, /v1/openai/v1). */
function llamaStackOpenai(prefix: string): Entry[] {
  return [
    ...models(prefix),
    ...chatCompletions(prefix),
    modelRead(`${prefix}/completions`),
    modelRead(`${prefix}/embeddings`),
    modelRead(`${prefix}/moderations`, { optional: true }),
    ...responses(prefix),
    ...owned(`${prefix}/conversations`, "conversation"),
    ...owned(`${prefix}/files`, "file"),
    ...owned(`${prefix}/vector_stores`, "vector_store"),
    ...owned(`${prefix}/batches`, "batch"),
  ];
}

/** OpenAI's API reference (platform.openai.com/docs/api-reference): the model-serving and tenant-resource routes. */
function openaiEntries(): Entry[] {
  const p = "/v1";
  return [
    ...models(p),
    ...chatCompletions(p),
    modelRead(`${p}/completions`),
    modelRead(`${p}/embeddings`),
    modelRead(`${p}/audio/speech`),
    modelRead(`${p}/audio/transcriptions`),
    modelRead(`${p}/audio/translations`),
    modelRead(`${p}/images/generations`, { optional: true }),
    modelRead(`${p}/images/edits`, { optional: true }),
    modelRead(`${p}/images/variations`, { optional: true }),
    modelRead(`${p}/moderations`, { optional: true }),
    modelRead(`${p}/realtime/sessions`, { optional: true }),
    modelRead(`${p}/realtime/transcription_sessions`, { optional: true }),
    ...responses(p),
    ...owned(`${p}/conversations`, "conversation"),
    ...owned(`${p}/files`, "file"),
    ...owned(`${p}/uploads`, "upload"),
    ...owned(`${p}/vector_stores`, "vector_store"),
    ...owned(`${p}/batches`, "batch"),
    ...owned(`${p}/fine_tuning/jobs`, "fine_tuning_job", { reads: [MODEL] }),
    ...owned(`${p}/assistants`, "assistant", { reads: [MODEL] }),
    // A run reads its assistant (and the model it may override); on a thread it changes the thread.
    entry("POST", `${p}/threads/runs`, "thread", "create", { id: "response.thread_id", reads: [{ type: "assistant", field: "assistant_id" }, OPTIONAL_MODEL] }),
    entry("POST", `${p}/threads/{id}/runs`, "thread", "update", { reads: [{ type: "assistant", field: "assistant_id" }, OPTIONAL_MODEL] }),
    ...owned(`${p}/threads`, "thread"),
    ...owned(`${p}/evals`, "eval"),
    ...owned(`${p}/containers`, "container"),
    ...owned(`${p}/videos`, "video", { reads: [OPTIONAL_MODEL] }),
  ];
}

/** Llama Stack 0.7's routes (its API reference and llama-stack-client's api.md); its registries are typed resources. */
function llamaStackEntries(): Entry[] {
  const p = "/v1";
  return [
    // Registering a model creates it (owner recorded from the answer's `identifier`).
    entry("POST", `${p}/models`, "model", "create", { id: "response.identifier" }),
    ...llamaStackOpenai(p),
    ...llamaStackOpenai("/v1/openai/v1"),
    modelRead("/v1alpha/inference/rerank"),
    // Registries: shields, tool groups, tools, scoring functions, benchmarks, datasets, vector DBs (older).
    entry("GET", `${p}/shields`, "shield", "list"),
    entry("POST", `${p}/shields`, "shield", "create", { id: "body.shield_id" }),
    entry("GET", `${p}/shields/{id+}`, "shield", "read"),
    entry("DELETE", `${p}/shields/{id+}`, "shield", "delete"),
    entry("POST", `${p}/safety/run-shield`, "shield", "read", { id: "body.shield_id" }),
    entry("GET", `${p}/toolgroups`, "tool_group", "list"),
    entry("POST", `${p}/toolgroups`, "tool_group", "create", { id: "body.toolgroup_id" }),
    entry("GET", `${p}/toolgroups/{id+}`, "tool_group", "read"),
    entry("DELETE", `${p}/toolgroups/{id+}`, "tool_group", "delete"),
    entry("GET", `${p}/tools`, "tool", "list"),
    entry("GET", `${p}/tools/{id+}`, "tool", "read"),
    forward("GET", `${p}/tool-runtime/list-tools`),
    entry("POST", `${p}/tool-runtime/invoke`, "tool", "read", { id: "body.tool_name" }),
    entry("POST", `${p}/vector-io/insert`, "vector_store", "update", { id: "body.vector_store_id|vector_db_id" }),
    entry("POST", `${p}/vector-io/query`, "vector_store", "read", { id: "body.vector_store_id|vector_db_id" }),
    entry("GET", `${p}/vector-dbs`, "vector_db", "list"),
    entry("POST", `${p}/vector-dbs`, "vector_db", "create", { id: "response.identifier" }),
    entry("GET", `${p}/vector-dbs/{id}`, "vector_db", "read"),
    entry("DELETE", `${p}/vector-dbs/{id}`, "vector_db", "delete"),
    entry("GET", `${p}/scoring-functions`, "scoring_function", "list"),
    entry("POST", `${p}/scoring-functions`, "scoring_function", "create", { id: "body.scoring_fn_id" }),
    entry("GET", `${p}/scoring-functions/{id+}`, "scoring_function", "read"),
    forward("POST", `${p}/scoring/score`),
    entry("POST", `${p}/scoring/score-batch`, "dataset", "read", { id: "body.dataset_id" }),
    ...owned("/v1alpha/eval/benchmarks", "benchmark", { id: "body.benchmark_id" }),
    ...owned("/v1beta/datasets", "dataset", { id: "response.identifier" }),
    entry("POST", "/v1beta/datasetio/append-rows/{id}", "dataset", "update"),
    entry("GET", "/v1beta/datasetio/iterrows/{id}", "dataset", "read"),
    ...owned(`${p}/prompts`, "prompt", { id: "response.prompt_id" }),
    entry("GET", `${p}/providers`, "provider", "list", { items: { field: "data", id: "provider_id" } }),
    entry("GET", `${p}/providers/{id}`, "provider", "read"),
    forward("GET", `${p}/inspect/routes`),
    forward("GET", `${p}/health`),
    forward("GET", `${p}/version`),
  ];
}

/** vLLM's OpenAI-compatible server (vllm/entrypoints/openai/api_server.py and its routers). */
function vllmEntries(): Entry[] {
  return [
    ...models("/v1").slice(0, 2),
    ...chatCompletions("/v1").slice(0, 1),
    modelRead("/v1/completions"),
    modelRead("/v1/embeddings"),
    modelRead("/v1/audio/transcriptions"),
    modelRead("/v1/audio/translations"),
    ...responses("/v1"),
    // vLLM's own APIs: each names the model it runs.
    modelRead("/tokenize"),
    modelRead("/detokenize"),
    modelRead("/pooling"),
    modelRead("/classify"),
    modelRead("/score"),
    modelRead("/v1/score"),
    modelRead("/rerank"),
    modelRead("/v1/rerank"),
    modelRead("/v2/rerank"),
    // SageMaker's entry point dispatches to the routes above by body shape; it names the model the same way.
    modelRead("/invocations"),
    // LoRA adapters loaded at runtime are models: loading creates one, unloading deletes it.
    entry("POST", "/v1/load_lora_adapter", "model", "create", { id: "body.lora_name" }),
    entry("POST", "/v1/unload_lora_adapter", "model", "delete", { id: "body.lora_name" }),
    forward("GET", "/health"),
    forward("GET", "/ping"),
    forward("POST", "/ping"),
    forward("GET", "/version"),
    forward("GET", "/load"),
    forward("GET", "/get_tokenizer_info"),
  ];
}

/** Ollama's server (server/routes.go, docs/api.md): names a model as `model` or, in older clients, `name`. */
function ollamaEntries(): Entry[] {
  const named = { id: "body.model|name" } as const;
  return [
    forward("GET", "/"),
    forward("GET", "/api/version"),
    forward("GET", "/api/status"),
    entry("GET", "/api/tags", "model", "list", { items: { field: "models", id: "name" } }),
    entry("GET", "/api/ps", "model", "list", { items: { field: "models", id: "name" } }),
    entry("POST", "/api/show", "model", "read", named),
    modelRead("/api/generate", named),
    modelRead("/api/chat", named),
    modelRead("/api/embed", named),
    modelRead("/api/embeddings", named),
    // Routes that change the server's models.
    entry("POST", "/api/pull", "model", "create", named),
    entry("POST", "/api/create", "model", "create", named),
    entry("POST", "/api/copy", "model", "create", { id: "body.destination", reads: [{ type: "model", field: "source" }] }),
    entry("DELETE", "/api/delete", "model", "delete", named),
    // A push publishes a local model to a registry under the server's identity: it changes no local model, nothing to record.
    entry("POST", "/api/push", "model", "create", { ...named, record: false }),
    // Blobs (by digest) are what /api/create is built from.
    entry("POST", "/api/blobs/{id}", "blob", "create", { id: "path" }),
    entry("GET", "/api/blobs/{id}", "blob", "read"),
    // Its OpenAI (and Anthropic) compatible routes.
    ...models("/v1").slice(0, 2),
    modelRead("/v1/chat/completions"),
    modelRead("/v1/completions"),
    modelRead("/v1/embeddings"),
    modelRead("/v1/responses"),
    modelRead("/v1/images/generations", { optional: true }),
    modelRead("/v1/images/edits", { optional: true }),
    modelRead("/v1/audio/transcriptions"),
    modelRead("/v1/messages"),
  ];
}

/** Hugging Face TGI's router (router/src/server.rs): one model per server; its native routes name none. */
function tgiEntries(): Entry[] {
  return [
    forward("GET", "/"),
    forward("POST", "/"),
    forward("GET", "/info"),
    forward("POST", "/generate"),
    forward("POST", "/generate_stream"),
    forward("POST", "/tokenize"),
    forward("POST", "/invocations"),
    forward("GET", "/health"),
    forward("GET", "/ping"),
    modelRead("/chat_tokenize"),
    modelRead("/v1/chat/completions"),
    modelRead("/v1/completions"),
    ...models("/v1").slice(0, 2),
  ];
}

/** The preset names, in their default order. */
export const PRESET_NAMES = ["openai", "llama_stack", "vllm", "ollama", "tgi"] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/** The built-in catalogs, by `server.resources.presets` name. */
export const CATALOG_PRESETS: Readonly<Record<PresetName, readonly CatalogEntry[]>> = Object.freeze({
  openai: Object.freeze(openaiEntries()),
  llama_stack: Object.freeze(llamaStackEntries()),
  vllm: Object.freeze(vllmEntries()),
  ollama: Object.freeze(ollamaEntries()),
  tgi: Object.freeze(tgiEntries()),
});

function compileEntry(entry: CatalogEntry): CompiledEntry {
  let path = entry.path;
  const deep = path.endsWith("/*");
  if (deep) path = path.slice(0, -2);
  const segments = path.split("/").filter(Boolean).map((s) => (s === "{id}" || s === "{id+}" ? s : s.toLowerCase()));
  return { entry, method: entry.method.toUpperCase(), segments, deep };
}

/** A compiled catalog; {@link Catalog.match} finds the entry for a request. */
export interface Catalog {
  /**
   * The entry for a request, or undefined when no entry declares it.
   * `matchPath` is `routeMatchPath(path)`; `path` the canonical path
   * (identifiers keep their case).
   */
  match(method: string, matchPath: string, path: string): CatalogMatch | undefined;
  /** The methods some entry declares for this `routeMatchPath` (HEAD with GET), for OPTIONS' `Allow`; empty when none. */
  methods(matchPath: string): string[];
}

/** Builds the catalog of `server.resources`: its routes first, then its presets in order. */
export function createCatalog(resources: Pick<Config["server"]["resources"], "presets" | "routes"> | undefined): Catalog {
  const entries: CatalogEntry[] = [
    ...(resources?.routes ?? []),
    ...(resources?.presets ?? PRESET_NAMES).flatMap((name) => CATALOG_PRESETS[name]),
  ];
  const compiled = entries.map(compileEntry);
  return {
    match(method, matchPath, path) {
      const m = method === "HEAD" ? "GET" : method;
      const lower = matchPath.split("/").filter(Boolean);
      let original: string[] | undefined;
      for (const c of compiled) {
        if (c.method !== m) continue;
        const id = matchSegments(c, lower, () => (original ??= path.split("/").filter(Boolean)));
        if (id === false) continue;
        const spec = c.entry.id ?? (c.entry.action === "create" ? "response.id" : "path");
        return {
          entry: c.entry,
          type: c.entry.type,
          action: c.entry.action,
          pathId: spec === "path" ? id : undefined,
          bodyFields: spec.startsWith("body.") ? spec.slice(5).split("|") : undefined,
          responseField: spec.startsWith("response.") ? spec.slice(9) : undefined,
        };
      }
      return undefined;
    },
    methods(matchPath) {
      const lower = matchPath.split("/").filter(Boolean);
      const found = new Set<string>();
      for (const c of compiled) {
        if (found.has(c.method)) continue;
        if (matchSegments(c, lower, () => lower.slice()) !== false) found.add(c.method);
      }
      if (found.has("GET")) found.add("HEAD");
      return [...found].sort();
    },
  };
}

/** The identifier (or undefined without `{id}`) when `c` matches; false when it does not. */
function matchSegments(c: CompiledEntry, lower: readonly string[], original: () => string[]): string | undefined | false {
  let id: string | undefined;
  const segs = c.segments;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === "{id+}") {
      if (i >= lower.length) return false;
      return original().slice(i).join("/");
    }
    if (i >= lower.length) return false;
    if (s === "{id}") id = original()[i]!;
    else if (s !== lower[i]) return false;
  }
  if (lower.length === segs.length) return id;
  return c.deep ? id : false;
}
