import { StoreUnavailableError } from "../errors.js";
import { DuplicateApiKeyError } from "../keys.js";
import type { Logger } from "../log.js";
import { resourceKey } from "../policy/evaluate.js";
import type { OwnerRecord, RecordStore } from "./types.js";

/**
 * The record store as the request path must see it: a fault never widens
 * access and never hangs a request.
 *
 * - Every call has a deadline ({@link STORE_DEADLINE_MS}); a call that fails
 *   or runs past it rejects with {@link StoreUnavailableError} (503
 *   `store_unavailable`), never a driver error that would become a 500. The
 *   driver's own error goes to the log, once per failure.
 * - An owner that could not be written is kept in a bounded table of pending
 *   owners, consulted by every owner lookup before the store, and written
 *   again every {@link PENDING_RETRY_MS} until the store takes it. The
 *   resource the upstream created is therefore never unowned (open to every
 *   tenant under the default policy) while the gateway runs; the caller still
 *   gets the rejection (it answers 503: created, not recorded).
 * - {@link ResilientRecordStore.ensureWritable} is asked before a create is
 *   forwarded: it fails while the store does not take writes (a write probe,
 *   its success remembered for {@link WRITABLE_CACHE_MS}) or while the
 *   pending table is full, so the upstream creates nothing that could not
 *   be recorded.
 *
 * Pending owners live in this process: one that has not landed when the
 * process ends is lost (docs/security.md says so), and another replica
 * sees the store only.
 */

/** Longest a request waits for one record store call (ms). */
export const STORE_DEADLINE_MS = 2000;
/** How often pending owners are written again (ms). */
export const PENDING_RETRY_MS = 1000;
/** Most owners held while the store is failing; past it creates are refused before forwarding. */
export const MAX_PENDING_OWNERS = 10_000;
/** How long a successful write probe lets creates through without another (ms). */
export const WRITABLE_CACHE_MS = 1000;

export interface ResilientRecordStore extends RecordStore {
  /** Resolves when an owner recorded now would be written; rejects with {@link StoreUnavailableError} otherwise. */
  ensureWritable(): Promise<void>;
  /** Owners waiting to be written (tests, metrics). */
  pendingOwners(): number;
}

export interface ResilientOptions {
  readonly log: Logger;
  /** Deadline per call; {@link STORE_DEADLINE_MS} by default. */
  readonly deadlineMs?: number | undefined;
  readonly retryMs?: number | undefined;
  readonly maxPending?: number | undefined;
  readonly now?: (() => number) | undefined;
}

/**
 * Wraps `store`; closing the wrapper closes it.
 *
 * @example
 * const store = resilientRecordStore(await openRecordStore(config.storage), { log });
 */
export function resilientRecordStore(store: RecordStore, options: ResilientOptions): ResilientRecordStore {
  const { deadlineMs = STORE_DEADLINE_MS, retryMs = PENDING_RETRY_MS, maxPending = MAX_PENDING_OWNERS, now = Date.now } = options;
  const log = options.log.child({ component: "record_store" });
  const pending = new Map<string, OwnerRecord>();
  let retryTimer: NodeJS.Timeout | undefined;
  let writableUntil = 0;
  let closed = false;

  /**
   * `call` within the deadline; any failure becomes a 503 (a duplicate key
   * stays what it is) and forgets the last successful write probe.
   */
  function bounded<T>(what: string, call: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        writableUntil = 0;
        log.error({ operation: what, deadline_ms: deadlineMs }, "record store did not answer in time");
        reject(new StoreUnavailableError());
      }, deadlineMs);
      let started: Promise<T>;
      try {
        started = call();
      } catch (err) {
        started = Promise.reject(err);
      }
      started.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (err instanceof DuplicateApiKeyError) return reject(err);
          writableUntil = 0;
          if (err instanceof StoreUnavailableError) return reject(err);
          // The message only: driver errors name the statement, never its parameters.
          log.error({ operation: what, err: err instanceof Error ? err.message : String(err) }, "record store failed");
          reject(new StoreUnavailableError());
        },
      );
    });
  }

  function scheduleRetry(): void {
    if (retryTimer || closed || pending.size === 0) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void retryPending().finally(scheduleRetry);
    }, retryMs);
    retryTimer.unref();
  }

  async function retryPending(): Promise<void> {
    for (const [key, owner] of [...pending]) {
      try {
        await bounded("putOwner", () => store.putOwner(owner));
      } catch {
        return; // still failing: the next round tries again
      }
      // A delete or a newer create may have replaced the entry meanwhile.
      if (pending.get(key) === owner) pending.delete(key);
      log.info({ audit: true, event: "owner_recorded_late", principal: owner.principal, resource: key }, "pending resource owner recorded");
    }
  }

  return {
    kind: store.kind,
    insertApiKey: (record) => bounded("insertApiKey", () => store.insertApiKey(record)),
    findApiKeyByHash: (hash) => bounded("findApiKeyByHash", () => store.findApiKeyByHash(hash)),
    listApiKeys: () => bounded("listApiKeys", () => store.listApiKeys()),
    pageApiKeys: (query) => bounded("pageApiKeys", () => store.pageApiKeys(query)),
    getApiKey: (id) => bounded("getApiKey", () => store.getApiKey(id)),
    recordUsage: (deltas) => bounded("recordUsage", () => store.recordUsage(deltas)),
    usage: (query) => bounded("usage", () => store.usage(query)),
    revokeApiKey: (idOrHash, at) => bounded("revokeApiKey", () => store.revokeApiKey(idOrHash, at)),
    countActiveApiKeys: (at) => bounded("countActiveApiKeys", () => store.countActiveApiKeys(at)),
    rotateApiKey: (id, secret, previousValidUntil) => bounded("rotateApiKey", () => store.rotateApiKey(id, secret, previousValidUntil)),
    insertFirstApiKey: (record) => bounded("insertFirstApiKey", () => store.insertFirstApiKey(record)),

    async putOwner(record) {
      const key = resourceKey(record.type, record.id);
      try {
        await bounded("putOwner", () => store.putOwner(record));
        pending.delete(key);
      } catch (err) {
        // The upstream made the resource already: it must not stay unowned.
        if (pending.size < maxPending || pending.has(key)) {
          pending.set(key, record);
          scheduleRetry();
        } else {
          log.error({ resource: key, pending: pending.size }, "pending owner table full: a resource may stay unowned until restart");
        }
        throw err;
      }
    },
    async findOwner(type, id) {
      const held = pending.get(resourceKey(type, id));
      if (held) return held;
      return bounded("findOwner", () => store.findOwner(type, id));
    },
    async findOwners(type, ids) {
      const held = new Map<string, OwnerRecord>();
      const rest: string[] = [];
      for (const id of ids) {
        const owner = pending.get(resourceKey(type, id));
        if (owner) held.set(id, owner);
        else rest.push(id);
      }
      if (rest.length === 0) return held;
      const found = await bounded("findOwners", () => store.findOwners(type, rest));
      for (const [id, owner] of held) found.set(id, owner);
      return found;
    },
    async deleteOwner(type, id) {
      // Only once the store forgot it too: a pending owner guards the resource until then.
      const deleted = await bounded("deleteOwner", () => store.deleteOwner(type, id));
      return pending.delete(resourceKey(type, id)) || deleted;
    },
    ping: () => bounded("ping", () => store.ping()),

    async ensureWritable() {
      if (pending.size >= maxPending) throw new StoreUnavailableError();
      if (now() < writableUntil) return;
      await bounded("ping", () => store.ping());
      writableUntil = now() + WRITABLE_CACHE_MS;
    },
    pendingOwners: () => pending.size,

    async close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = undefined;
      if (pending.size > 0) {
        await retryPending().catch(() => {});
        if (pending.size > 0) log.error({ pending: pending.size }, "closing with resource owners not recorded: those resources are unowned after a restart");
      }
      await store.close();
    },
  };
}
