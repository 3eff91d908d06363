import type { Logger } from "../log.js";
import type { RecordStore, UsageDelta } from "../stores/types.js";

/**
 * Usage recording: every forwarded request is added to its hour's row in
 * memory (a Map update, nothing else on the request's path), and the rows
 * are written to the record store in one batch every {@link FLUSH_MS}, as
 * additions (`recordUsage`), so replicas sharing a database sum exactly.
 *
 * A batch the store refuses is kept and added to the next one; rows beyond
 * {@link MAX_PENDING_ROWS} (a long outage, many distinct rows) are dropped,
 * logged and counted ({@link UsageRecorder.dropped}), never allowed to grow
 * memory without bound or to fail a request.
 */

/** How far behind the store may be: rows are written at least this often (ms). */
export const FLUSH_MS = 1000;
/** Most rows held in memory while the store is failing; more are dropped. */
export const MAX_PENDING_ROWS = 50_000;

const HOUR_MS = 3_600_000;

/** One request's usage (or more tokens of one already counted: `requests: 0`); its hour is the recorder's clock's. */
export type UsageEntry = Omit<UsageDelta, "hour">;

export interface UsageRecorder {
  /** Adds `entry` to its hour's row in memory; written within {@link FLUSH_MS}. Never throws, never waits. */
  record(entry: UsageEntry): void;
  /** Writes what is held now; resolves when the store took it or it was put back for the next try. */
  flush(): Promise<void>;
  /** Rows waiting to be written. */
  pending(): number;
  /** Rows dropped since start because the store failed for too long. */
  readonly dropped: number;
  /** Stops the timer and writes what is held (SIGTERM, reload). */
  close(): Promise<void>;
}

export interface UsageRecorderOptions {
  readonly store: Pick<RecordStore, "recordUsage">;
  readonly log: Logger;
  readonly flushMs?: number | undefined;
  readonly maxPendingRows?: number | undefined;
  /** Told how many rows were dropped (metrics). */
  readonly onDropped?: ((rows: number) => void) | undefined;
  readonly now?: (() => number) | undefined;
}

/** A row being summed in memory. */
type Row = { -readonly [K in keyof UsageDelta]: UsageDelta[K] };

function addCounts(row: Row, more: UsageEntry): void {
  row.requests += more.requests;
  row.promptTokens += more.promptTokens;
  row.completionTokens += more.completionTokens;
  row.costNanos += more.costNanos;
}

/**
 * The rows not yet written, in order, and an index to find a request's row
 * without making a key of its parts (hour, then principal, key id, model,
 * upstream; "" for an absent one): one Map lookup per part, on strings
 * whose hash V8 has already computed for the most part.
 */
class Batch {
  readonly rows: Row[] = [];
  private readonly index = new Map<number, Map<string, Map<string, Map<string, Map<string, Row>>>>>();

  /** The row of `entry`'s parts in `hour`; undefined when there is none. */
  find(hour: number, entry: UsageEntry): Row | undefined {
    return this.index.get(hour)?.get(entry.principal)?.get(entry.keyId ?? "")?.get(entry.model ?? "")?.get(entry.upstream);
  }

  /** Adds a new row (its parts have none yet). */
  insert(row: Row): void {
    const level = <K, V>(map: Map<K, V>, key: K, make: () => V): V => {
      let next = map.get(key);
      if (next === undefined) map.set(key, (next = make()));
      return next;
    };
    const byPrincipal = level(this.index, row.hour, () => new Map());
    const byKey = level(byPrincipal, row.principal, () => new Map());
    const byModel = level(byKey, row.keyId ?? "", () => new Map());
    level(byModel, row.model ?? "", () => new Map<string, Row>()).set(row.upstream, row);
    this.rows.push(row);
  }
}

/**
 * @example
 * const usage = createUsageRecorder({ store, log });
 * usage.record({ principal: "alice", keyId: "key_1", model: "m1", upstream: "default", requests: 1, promptTokens: 12, completionTokens: 30, costNanos: 4200 });
 * await usage.close();
 */
export function createUsageRecorder(options: UsageRecorderOptions): UsageRecorder {
  const { store, flushMs = FLUSH_MS, maxPendingRows = MAX_PENDING_ROWS, onDropped, now = Date.now } = options;
  const log = options.log.child({ component: "usage" });
  let batch = new Batch();
  let dropped = 0;
  let flushing: Promise<void> | undefined;
  let closed = false;
  const timer = setInterval(() => void flush(), flushMs);
  timer.unref();

  /** Adds `row` to `into` (summed into the row of its parts, else as a new row); false when `into` is full. */
  function add(into: Batch, row: Row): boolean {
    const held = into.find(row.hour, row);
    if (held) {
      addCounts(held, row);
      return true;
    }
    if (into.rows.length >= maxPendingRows) return false;
    into.insert(row);
    return true;
  }

  let lastDropLog = 0;
  function drop(count: number): void {
    dropped += count;
    onDropped?.(count);
    // At most one line a second: while the store is down every request would log one.
    if (now() - lastDropLog < 1000) return;
    lastDropLog = now();
    log.error({ rows: count, dropped_total: dropped, max_pending_rows: maxPendingRows }, "usage dropped: the record store has not taken it");
  }

  function flush(): Promise<void> {
    if (flushing) return flushing.then(() => (batch.rows.length > 0 ? flush() : undefined));
    if (batch.rows.length === 0) return Promise.resolve();
    const failed = batch;
    batch = new Batch();
    flushing = store
      .recordUsage(failed.rows)
      .catch((err: unknown) => {
        // Put back, in front of what came meanwhile; what does not fit is dropped.
        let lost = 0;
        const merged = new Batch();
        for (const row of failed.rows) if (!add(merged, row)) lost++;
        for (const row of batch.rows) if (!add(merged, row)) lost++;
        batch = merged;
        log.warn({ err: err instanceof Error ? err.message : String(err), pending_rows: batch.rows.length }, "usage not written; kept for the next try");
        if (lost > 0) drop(lost);
      })
      .finally(() => {
        flushing = undefined;
      });
    return flushing;
  }

  return {
    record(entry) {
      if (closed) return;
      const at = now();
      const hour = at - (at % HOUR_MS);
      // The usual case, a row this hour already has: four additions, no allocation.
      const held = batch.find(hour, entry);
      if (held) {
        addCounts(held, entry);
        return;
      }
      if (batch.rows.length >= maxPendingRows) return drop(1);
      batch.insert({
        hour,
        principal: entry.principal,
        keyId: entry.keyId,
        model: entry.model,
        upstream: entry.upstream,
        requests: entry.requests,
        promptTokens: entry.promptTokens,
        completionTokens: entry.completionTokens,
        costNanos: entry.costNanos,
      });
    },
    flush,
    pending: () => batch.rows.length,
    get dropped() {
      return dropped;
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      await flush();
      if (batch.rows.length > 0) log.error({ rows: batch.rows.length }, "closing with usage not written: it is lost");
    },
  };
}
