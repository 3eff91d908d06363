import type { Config } from "../core/config/schema.js";
import type { Action } from "../core/policy/compile.js";

/**
 * The resource catalog: which requests touch which resource, declared as
 * data. Each entry maps a method and a path template to a resource type, an
 * action and where the resource's identifier is. Presets cover the OpenAI API
 * and the Llama Stack API; `server.resources.routes` adds entries, tried
 * before the presets. The first entry that matches decides.
 *
 * Templates: literal segments match case-insensitively (as route rules do,
 * see `routeMatchPath`); `{id}` takes one segment (its original case) as the
 * identifier; `{id+}` takes the rest of the path (model ids such as
 * `meta-llama/Llama-3-8B` contain `/`); a trailing `/*` matches the entry's
 * path and anything below it (sub-routes such as `/v1/files/{id}/content`).
 */

/** What a request does to a resource: the four actions, or `list` (the response is filtered). */
export type CatalogAction = Action | "list";

/** One catalog entry, as in `server.resources.routes`. */
export interface CatalogEntry {
  readonly method: string;
  readonly path: string;
  readonly type: string;
  readonly action: CatalogAction;
  /** `path` ({id} in the template), `body.<field>` (JSON or form field), `response.id` / `response.<field>` (create). Default: by action. */
  readonly id?: string | undefined;
  /** For `body.<field>`: forward unchecked when the field is absent (the upstream's default applies); else 400. */
  readonly optional?: boolean | undefined;
}

/** A request matched to an entry. */
export interface CatalogMatch {
  readonly entry: CatalogEntry;
  readonly type: string;
  readonly action: CatalogAction;
  /** The identifier from the path, when the entry's id is `path`. */
  readonly pathId: string | undefined;
  /** `body.<field>`: the field; undefined otherwise. */
  readonly bodyField: string | undefined;
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

const INFERENCE_ROUTES: readonly (readonly [string, boolean])[] = [
  ["/chat/completions", false],
  ["/completions", false],
  ["/embeddings", false],
  ["/audio/speech", false],
  ["/audio/transcriptions", false],
  ["/audio/translations", false],
  ["/images/generations", true],
  ["/images/edits", true],
  ["/images/variations", true],
  ["/moderations", true],
];

/** Owned resource collections: path (under the API prefix), type. */
const OWNED: readonly (readonly [string, string])[] = [
  ["/files", "file"],
  ["/vector_stores", "vector_store"],
  ["/conversations", "conversation"],
  ["/batches", "batch"],
  ["/fine_tuning/jobs", "fine_tuning_job"],
];

function openaiEntries(prefix: string): CatalogEntry[] {
  const entries: CatalogEntry[] = [
    { method: "GET", path: `${prefix}/models`, type: "model", action: "list" },
    { method: "GET", path: `${prefix}/models/{id+}`, type: "model", action: "read" },
    { method: "DELETE", path: `${prefix}/models/{id+}`, type: "model", action: "delete" },
  ];
  for (const [route, optional] of INFERENCE_ROUTES) {
    entries.push({ method: "POST", path: `${prefix}${route}`, type: "model", action: "read", id: "body.model", optional });
  }
  // Responses: a create that also reads the model (handled as one entry: see resources.ts).
  entries.push({ method: "POST", path: `${prefix}/responses`, type: "response", action: "create", id: "response.id" });
  entries.push({ method: "GET", path: `${prefix}/responses/{id}/*`, type: "response", action: "read" });
  entries.push({ method: "POST", path: `${prefix}/responses/{id}/*`, type: "response", action: "update" });
  entries.push({ method: "DELETE", path: `${prefix}/responses/{id}`, type: "response", action: "delete" });
  // Chat completions stored with `store: true` are listed and retrieved under /chat/completions.
  for (const [route, type] of OWNED) {
    entries.push({ method: "POST", path: `${prefix}${route}`, type, action: "create", id: "response.id" });
    entries.push({ method: "GET", path: `${prefix}${route}`, type, action: "list" });
    entries.push({ method: "GET", path: `${prefix}${route}/{id}/*`, type, action: "read" });
    entries.push({ method: "DELETE", path: `${prefix}${route}/{id}`, type, action: "delete" });
    // Deleting something inside (a file of a vector store, an item of a conversation) changes the container.
    entries.push({ method: "DELETE", path: `${prefix}${route}/{id}/*`, type, action: "update" });
    entries.push({ method: "POST", path: `${prefix}${route}/{id}/*`, type, action: "update" });
  }
  return entries;
}

/** The built-in catalogs, by `server.resources.presets` name. */
export const CATALOG_PRESETS: Readonly<Record<"openai" | "llama_stack", readonly CatalogEntry[]>> = Object.freeze({
  openai: Object.freeze(openaiEntries("/v1")),
  llama_stack: Object.freeze([
    // Llama Stack registers models (owner recorded from the response's `identifier`).
    { method: "POST", path: "/v1/models", type: "model", action: "create", id: "response.identifier" },
    // Its OpenAI-compatible API under /v1/openai/v1 (older releases).
    ...openaiEntries("/v1/openai/v1"),
    { method: "GET", path: "/v1/vector-dbs", type: "vector_db", action: "list" },
    { method: "POST", path: "/v1/vector-dbs", type: "vector_db", action: "create", id: "response.identifier" },
    { method: "GET", path: "/v1/vector-dbs/{id}", type: "vector_db", action: "read" },
    { method: "DELETE", path: "/v1/vector-dbs/{id}", type: "vector_db", action: "delete" },
    { method: "GET", path: "/v1/shields", type: "shield", action: "list" },
    { method: "GET", path: "/v1/shields/{id+}", type: "shield", action: "read" },
  ] satisfies CatalogEntry[]),
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
   * The entry for a request, or undefined when it touches no catalogued
   * resource. `matchPath` is `routeMatchPath(path)`; `path` the canonical
   * path (identifiers keep their case; `;` parameters are cut from them).
   */
  match(method: string, matchPath: string, path: string): CatalogMatch | undefined;
}

/** Builds the catalog of `server.resources`: its routes first, then its presets in order. */
export function createCatalog(resources: Config["server"]["resources"] | undefined): Catalog {
  const entries: CatalogEntry[] = [
    ...(resources?.routes ?? []),
    ...(resources?.presets ?? ["openai", "llama_stack"]).flatMap((name) => CATALOG_PRESETS[name]),
  ];
  const compiled = entries.map(compileEntry);
  return {
    match(method, matchPath, path) {
      const m = method === "HEAD" ? "GET" : method;
      const lower = matchPath.split("/").filter(Boolean);
      let original: string[] | undefined;
      for (const c of compiled) {
        if (c.method !== m) continue;
        const id = matchSegments(c, lower, () => (original ??= path.replace(/;[^/]*/g, "").split("/").filter(Boolean)));
        if (id === false) continue;
        const spec = c.entry.id ?? (c.entry.action === "create" ? "response.id" : "path");
        return {
          entry: c.entry,
          type: c.entry.type,
          action: c.entry.action,
          pathId: spec === "path" ? id : undefined,
          bodyField: spec.startsWith("body.") ? spec.slice(5) : undefined,
          responseField: spec.startsWith("response.") ? spec.slice(9) : undefined,
        };
      }
      return undefined;
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
