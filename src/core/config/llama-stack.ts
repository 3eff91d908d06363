import { homedir } from "node:os";
import { z } from "zod";

/**
 * Llama Stack 0.7's storage forms, so that the `server` and `storage`
 * sections of a `run.yaml` work copied unchanged:
 *
 * ```yaml
 * storage:
 *   backends:
 *     kv_default: {type: kv_sqlite, db_path: ~/.llama/distributions/starter/kvstore.db}
 *     sql_default: {type: sql_sqlite, db_path: ~/.llama/distributions/starter/sql_store.db}
 *   stores:
 *     metadata: {namespace: registry, backend: kv_default}
 * server:
 *   quota:
 *     kvstore: {backend: kv_default, namespace: quota}
 * ```
 *
 * The named backends map onto Tollgate's stores: the record store (keys,
 * owners) is the SQLite or PostgreSQL backend of `storage.stores.metadata`
 * (Llama Stack keeps its resource registry there), else of the SQL stores;
 * a quota `kvstore` reference becomes Tollgate's `sqlite` or `redis` quota
 * store. Backends Tollgate cannot use are accepted as long as nothing of
 * Tollgate's is put in them.
 */

/** A port as run.yaml writes it: a number, or the text of `${env.PORT:=5432}`. */
const port = z.union([z.number().int().min(1).max(65535), z.string().regex(/^\d{1,5}$/, "expected a port number")]);
/** Settings of Llama Stack's that tune its own connection pools: accepted, not used. */
const unused = z.unknown().optional();
const namespace = z.string().nullable().optional().describe("key prefix (Llama Stack's; a reference's namespace is what Tollgate uses)");

const sqliteBackend = {
  db_path: z.string().min(1).describe("the SQLite file (`~/` is the home folder)"),
};
const postgresBackend = {
  host: z.string().min(1).default("localhost").describe("PostgreSQL host"),
  port: port.default(5432).describe("PostgreSQL port"),
  db: z.string().min(1).default("llamastack").describe("database name"),
  user: z.string().min(1).describe("user name"),
  password: z.union([z.string(), z.number().transform(String)]).nullable().optional().describe("password"),
};

/** One entry of `storage.backends`, as Llama Stack 0.7 types it. */
export const llamaBackendSchema = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("kv_sqlite"), ...sqliteBackend, namespace }),
  z.strictObject({
    type: z.literal("kv_redis"),
    host: z.string().min(1).default("localhost").describe("Redis host"),
    port: port.default(6379).describe("Redis port"),
    namespace,
  }),
  z.strictObject({
    type: z.literal("kv_postgres"),
    ...postgresBackend,
    ssl_mode: z.string().nullable().optional().describe("libpq sslmode (require, verify-full, ...)"),
    ca_cert_path: z.string().nullable().optional().describe("CA certificate file for verify-ca / verify-full"),
    table_name: unused,
    namespace,
  }),
  z.strictObject({
    type: z.literal("kv_mongodb"),
    host: unused,
    port: unused,
    db: unused,
    user: unused,
    password: unused,
    collection_name: unused,
    namespace,
  }),
  z.strictObject({ type: z.literal("sql_sqlite"), ...sqliteBackend, pool_pre_ping: unused }),
  z.strictObject({
    type: z.literal("sql_postgres"),
    ...postgresBackend,
    pool_size: unused,
    max_overflow: unused,
    pool_recycle: unused,
    pool_pre_ping: unused,
  }),
]);

export type LlamaBackend = z.output<typeof llamaBackendSchema>;

/** `storage.stores.<name>`: a reference to a backend (with a namespace or a table name and tuning Tollgate ignores). */
const storeReferenceSchema = z
  .strictObject({
    backend: z.string().min(1).describe("name of a backend in storage.backends"),
    namespace: z.string().optional().describe("key prefix of a kv store (Llama Stack's)"),
    table_name: z.string().optional().describe("table of a SQL store (Llama Stack's)"),
    max_write_queue_size: unused,
    num_writers: unused,
  })
  .nullable();

/** Llama Stack 0.7's top-level `storage`: named backends and the stores that use them. */
export const llamaStorageSchema = z.strictObject({
  type: z.literal(undefined).optional(),
  backends: z.record(z.string(), llamaBackendSchema).describe("Llama Stack's named storage backends"),
  stores: z
    .record(z.string(), storeReferenceSchema)
    .optional()
    .describe("Llama Stack's stores (metadata, inference, conversations, ...): which backend each uses"),
});

export type LlamaStorage = z.output<typeof llamaStorageSchema>;

/** `server.quota.kvstore` as Llama Stack 0.7 writes it: a backend of `storage.backends` and a key prefix. */
export const kvstoreReferenceSchema = z.strictObject({
  type: z.literal(undefined).optional(),
  backend: z.string().min(1).describe("Llama Stack's form: a backend of the top-level storage.backends (kv_sqlite, sql_sqlite or kv_redis)"),
  namespace: z.string().min(1).describe("prefix of every quota key"),
});

/** A problem found while resolving a reference, at a path relative to the config's top. */
export interface ReferenceIssue {
  readonly path: readonly (string | number)[];
  readonly message: string;
}

/** The record store config (Tollgate's `storage` form) a Llama Stack `storage` section stands for. */
export type RecordStoreForm = { type: "sqlite"; db_path: string } | { type: "postgres"; url: string };

/** `~/x` → the home folder's `x`, as Llama Stack (Python's expanduser) reads it. */
export function expandHome(path: string): string {
  return path === "~" || path.startsWith("~/") ? homedir() + path.slice(1) : path;
}

function postgresUrl(b: Extract<LlamaBackend, { type: "kv_postgres" | "sql_postgres" }>): string {
  const auth = encodeURIComponent(b.user) + (b.password ? `:${encodeURIComponent(b.password)}` : "");
  const params = new URLSearchParams();
  if (b.type === "kv_postgres" && b.ssl_mode) params.set("sslmode", b.ssl_mode);
  if (b.type === "kv_postgres" && b.ca_cert_path) params.set("sslrootcert", expandHome(b.ca_cert_path));
  const query = params.size > 0 ? `?${params.toString()}` : "";
  const host = b.host.includes(":") && !b.host.startsWith("[") ? `[${b.host}]` : b.host;
  return `postgres://${auth}@${host}:${b.port}/${encodeURIComponent(b.db)}${query}`;
}

/** A backend as Tollgate's record store, or undefined when Tollgate cannot keep records in it. */
function recordStoreOf(backend: LlamaBackend): RecordStoreForm | undefined {
  switch (backend.type) {
    case "kv_sqlite":
    case "sql_sqlite":
      return { type: "sqlite", db_path: expandHome(backend.db_path) };
    case "kv_postgres":
    case "sql_postgres":
      return { type: "postgres", url: postgresUrl(backend) };
    default:
      return undefined;
  }
}

/**
 * Tollgate's record store for a Llama Stack `storage` section: the backend of
 * `stores.metadata` (default `kv_default`), else of `stores.conversations`,
 * `stores.inference` (default `sql_default`), the first that is SQLite or
 * PostgreSQL. Returns issues (naming their path) when a reference names no
 * backend or none can hold records.
 */
export function resolveRecordStore(storage: LlamaStorage): RecordStoreForm | ReferenceIssue[] {
  const issues: ReferenceIssue[] = [];
  const stores = storage.stores ?? {};
  for (const [name, ref] of Object.entries(stores)) {
    if (ref && !(ref.backend in storage.backends)) {
      issues.push({ path: ["storage", "stores", name, "backend"], message: unknownBackend(ref.backend, storage) });
    }
  }
  if (issues.length > 0) return issues;
  const candidates = [
    stores.metadata === undefined ? "kv_default" : stores.metadata?.backend,
    stores.conversations?.backend,
    stores.inference === undefined ? "sql_default" : stores.inference?.backend,
  ];
  for (const name of candidates) {
    const backend = name === undefined ? undefined : storage.backends[name];
    const form = backend && recordStoreOf(backend);
    if (form) return form;
  }
  return [
    {
      path: ["storage", "backends"],
      message:
        "Tollgate keeps its keys and resource owners in SQLite or PostgreSQL: storage.stores.metadata (or conversations, inference) must name a kv_sqlite, sql_sqlite, kv_postgres or sql_postgres backend",
    },
  ];
}

/** The quota store a `server.quota.kvstore: {backend, namespace}` reference stands for. */
export type QuotaStoreForm =
  | { type: "sqlite"; db_path: string; namespace?: string | undefined }
  | {
      type: "redis";
      url?: string | undefined;
      host?: string | undefined;
      port?: number | undefined;
      password?: string | undefined;
      namespace?: string | undefined;
      command_timeout_ms: number;
      // Llama Stack's kv_redis is one server, never a cluster or sentinel group.
      cluster?: undefined;
      sentinel?: undefined;
    };

/** Resolves a quota `kvstore` reference against the top-level `storage.backends` (Llama Stack 0.7). */
export function resolveQuotaStore(
  ref: z.output<typeof kvstoreReferenceSchema>,
  backends: Readonly<Record<string, LlamaBackend>> | undefined,
): QuotaStoreForm | ReferenceIssue {
  const path = ["server", "quota", "kvstore", "backend"];
  const backend = backends?.[ref.backend];
  if (!backend) {
    return {
      path,
      message: backends
        ? unknownBackend(ref.backend, { backends })
        : `backend '${ref.backend}' needs the top-level storage.backends of Llama Stack's run.yaml (storage: {backends: {${ref.backend}: {type: kv_sqlite, db_path: ...}}})`,
    };
  }
  switch (backend.type) {
    case "kv_sqlite":
    case "sql_sqlite":
      return { type: "sqlite", db_path: expandHome(backend.db_path), namespace: ref.namespace };
    case "kv_redis":
      return { type: "redis", host: backend.host, port: Number(backend.port), namespace: ref.namespace, command_timeout_ms: 1000 };
    default:
      return {
        path,
        message: `backend '${ref.backend}' is ${backend.type}: Tollgate keeps quota counters in SQLite or Redis; name a kv_sqlite, sql_sqlite or kv_redis backend`,
      };
  }
}

function unknownBackend(name: string, storage: { backends: Readonly<Record<string, unknown>> }): string {
  const known = Object.keys(storage.backends).sort();
  return `unknown backend '${name}'; storage.backends has ${known.length > 0 ? known.join(", ") : "none"}`;
}
