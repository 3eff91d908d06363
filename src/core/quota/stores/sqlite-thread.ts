import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import type { CounterCheck, HitResult } from "../store.js";
import { openSqliteQuotaStoreHere, type SqliteQuotaStore, type SqliteQuotaStoreOptions } from "./sqlite-local.js";

/**
 * The SQLite quota store in a worker thread. The store itself
 * (sqlite-local.ts) runs unchanged in the thread; the gateway's thread sends it
 * the checks of one event-loop turn as one message and gets their results
 * back as one. A commit waits for the disk (an fsync: from a fraction of a
 * millisecond to several on a busy disk); in the gateway's thread that wait
 * held every request, here it holds none, and the checks that arrive
 * meanwhile go together into the next transaction (one commit for all).
 *
 * Errors keep their message and SQLite code (`SQLITE_FULL`, ...). The thread
 * does not keep the process alive; `close()` answers what was asked,
 * closes the database and ends the thread.
 */

/** The key of the thread's `workerData` that holds the store's options. */
const THREAD_MARK = "tollgateSqliteQuotaStore";

type Operation =
  | { readonly op: "hit"; readonly checks: readonly (readonly CounterCheck[])[] }
  | { readonly op: "add"; readonly key: string; readonly amount: number; readonly expiresAt: number }
  | { readonly op: "ping" | "size" | "close" }
  | { readonly op: "sweep"; readonly at: number | undefined };

type Request = Operation & { readonly id: number };

type Reply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: { readonly message: string; readonly code?: string | undefined } }
  | { readonly id: number; readonly ok: true; readonly results: readonly ({ readonly hit: HitResult } | { readonly error: ErrorData })[] };

interface ErrorData {
  readonly message: string;
  readonly code?: string | undefined;
}

function errorData(err: unknown): ErrorData {
  const code = (err as { code?: unknown } | null)?.code;
  return { message: err instanceof Error ? err.message : String(err), code: typeof code === "string" ? code : undefined };
}

function errorFrom(data: ErrorData): Error {
  return Object.assign(new Error(data.message), data.code === undefined ? {} : { code: data.code });
}

/** Opens the store in a new worker thread; rejects (the thread ended) when the database cannot be opened. */
export async function openSqliteQuotaThread(options: SqliteQuotaStoreOptions): Promise<SqliteQuotaStore> {
  // JavaScript from dist/; TypeScript from src/ (the tests), the thread loading tsx as the tests do.
  const typescript = import.meta.url.endsWith(".ts");
  const self = new URL(typescript ? "./sqlite-thread.ts" : "./sqlite-thread.js", import.meta.url);
  const { now: _now, ...sent } = options;
  const workerData = { [THREAD_MARK]: { ...sent, thread: false } satisfies SqliteQuotaStoreOptions };
  // (Under Node 20 a thread that inherits `--import tsx` cannot load .ts; tsx's API registers it in the thread.)
  const worker = typescript
    ? new Worker(`import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((tsx) => { tsx.register(); return import(${JSON.stringify(self.href)}); })`, { eval: true, workerData, execArgv: [] })
    : new Worker(self, { workerData });
  // The thread keeps the process alive only while an answer is awaited.
  worker.unref();

  let nextId = 0;
  const waiting = new Map<number, { resolve: (reply: Reply) => void; reject: (err: Error) => void }>();
  let ended: Error | undefined;
  const end = (err: Error) => {
    ended ??= err;
    for (const w of waiting.values()) w.reject(ended);
    waiting.clear();
  };
  worker.on("message", (reply: Reply) => {
    const w = waiting.get(reply.id);
    waiting.delete(reply.id);
    if (waiting.size === 0) worker.unref();
    w?.resolve(reply);
  });
  worker.on("error", (err) => end(err));
  worker.on("exit", () => end(new Error("quota store is closed")));

  /** Answers not yet received: close() waits for them (the thread answers out of order: a close could overtake them). */
  const inFlight = new Set<Promise<Reply>>();
  function send(operation: Operation): Promise<Reply> {
    if (ended) return Promise.reject(ended);
    const id = nextId++;
    const reply = new Promise<Reply>((resolve, reject) => {
      if (waiting.size === 0) worker.ref();
      waiting.set(id, { resolve, reject });
      worker.postMessage({ ...operation, id } satisfies Request);
    });
    inFlight.add(reply);
    const done = () => void inFlight.delete(reply);
    reply.then(done, done);
    return reply;
  }
  async function call(operation: Operation): Promise<unknown> {
    const reply = await send(operation);
    if (!reply.ok) throw errorFrom(reply.error);
    return "value" in reply ? reply.value : undefined;
  }

  // The thread answers "open" (id -1) once the database is ready, or fails.
  worker.ref();
  await new Promise<void>((resolve, reject) => {
    waiting.set(-1, { resolve: (reply) => (reply.ok ? resolve() : reject(errorFrom(reply.error))), reject });
  });

  // The checks of one turn of the event loop, sent together.
  let batch: { counters: readonly CounterCheck[]; resolve: (r: HitResult) => void; reject: (e: unknown) => void }[] | undefined;
  function sendBatch(): void {
    const checks = batch;
    // Sent already (by close()).
    if (!checks) return;
    batch = undefined;
    send({ op: "hit", checks: checks.map((c) => c.counters) }).then(
      (reply) => {
        if (!reply.ok) return checks.forEach((c) => c.reject(errorFrom(reply.error)));
        const results = (reply as { results: readonly ({ hit: HitResult } | { error: ErrorData })[] }).results;
        checks.forEach((c, i) => {
          const result = results[i]!;
          if ("hit" in result) c.resolve(result.hit);
          else c.reject(errorFrom(result.error));
        });
      },
      (err: unknown) => checks.forEach((c) => c.reject(err)),
    );
  }

  let closing: Promise<void> | undefined;
  return {
    hit(counters) {
      if (ended || closing) return Promise.reject(new Error("quota store is closed"));
      return new Promise((resolve, reject) => {
        if (!batch) {
          batch = [];
          setImmediate(sendBatch);
        }
        batch.push({ counters, resolve, reject });
      });
    },
    async add(key, amount, expiresAt) {
      await call({ op: "add", key, amount, expiresAt });
    },
    async ping() {
      await call({ op: "ping" });
    },
    async sweep(at) {
      return Number(await call({ op: "sweep", at }));
    },
    async size() {
      return Number(await call({ op: "size" }));
    },
    close() {
      closing ??= (async () => {
        // Checks already asked for are sent before the close, and answered.
        if (batch) sendBatch();
        await Promise.allSettled([...inFlight]);
        if (!ended) await call({ op: "close" }).catch(() => undefined);
        // Held while it ends: an unreferenced thread's exit would not keep the caller's await alive.
        worker.ref();
        await worker.terminate();
      })();
      return closing;
    },
  };
}

/** The thread's side: the store, opened in the thread; the checks of one message go into one transaction, answered together. */
async function serve(options: SqliteQuotaStoreOptions): Promise<void> {
  const port = parentPort!;
  let store: SqliteQuotaStore;
  try {
    store = await openSqliteQuotaStoreHere(options);
  } catch (err) {
    port.postMessage({ id: -1, ok: false, error: errorData(err) } satisfies Reply);
    return;
  }
  port.postMessage({ id: -1, ok: true, value: undefined } satisfies Reply);
  port.on("message", (request: Request) => {
    void answer(request).then((reply) => port.postMessage(reply));
  });

  async function answer(request: Request): Promise<Reply> {
    const { id } = request;
    try {
      switch (request.op) {
        case "hit": {
          // Every check of the message in this turn: the store runs them in one transaction.
          const settled = await Promise.allSettled(request.checks.map((counters) => store.hit(counters)));
          return { id, ok: true, results: settled.map((s) => (s.status === "fulfilled" ? { hit: s.value } : { error: errorData(s.reason) })) };
        }
        case "add":
          return { id, ok: true, value: await store.add(request.key, request.amount, request.expiresAt) };
        case "ping":
          return { id, ok: true, value: await store.ping() };
        case "sweep":
          return { id, ok: true, value: await store.sweep(request.at) };
        case "size":
          return { id, ok: true, value: await store.size() };
        case "close":
          return { id, ok: true, value: await store.close() };
      }
    } catch (err) {
      return { id, ok: false, error: errorData(err) };
    }
  }
}

// Loaded by a thread of openSqliteQuotaThread's (not by any worker that imports Tollgate): serve.
const mine = isMainThread ? undefined : (workerData as Record<string, SqliteQuotaStoreOptions> | null)?.[THREAD_MARK];
if (mine && parentPort) void serve(mine);
