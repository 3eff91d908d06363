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
 * @example
 * const usage = createUsageRecorder({ store, log });
 * usage.record({ principal: "alice", keyId: "key_1", model: "m1", upstream: "default", requests: 1, promptTokens: 12, completionTokens: 30, costNanos: 4200 });
 * await usage.close();
 */
export function createUsageRecorder(options: UsageRecorderOptions): UsageRecorder {
  const { store, flushMs = FLUSH_MS, maxPendingRows = MAX_PENDING_ROWS, onDropped, now = Date.now } = options;
  const log = options.log.child({ component: "usage" });
  let rows = new Map<string, Row>();
  let dropped = 0;
  let flushing: Promise<void> | undefined;
  let closed = false;
  const timer = setInterval(() => void flush(), flushMs);
  timer.unref();

  function add(into: Map<string, Row>, id: string, row: Row): boolean {
    const held = into.get(id);
    if (held) {
      addCounts(held, row);
      return true;
    }
    if (into.size >= maxPendingRows) return false;
    into.set(id, row);
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
    if (flushing) return flushing.then(() => (rows.size > 0 ? flush() : undefined));
    if (rows.size === 0) return Promise.resolve();
    const batch = rows;
    rows = new Map();
    const deltas: UsageDelta[] = [...batch.values()];
    flushing = store
      .recordUsage(deltas)
      .catch((err: unknown) => {
        // Put back, in front of what came meanwhile; what does not fit is dropped.
        let lost = 0;
        const merged = new Map<string, Row>();
        for (const [id, row] of batch) if (!add(merged, id, row)) lost++;
        for (const [id, row] of rows) if (!add(merged, id, row)) lost++;
        rows = merged;
        log.warn({ err: err instanceof Error ? err.message : String(err), pending_rows: rows.size }, "usage not written; kept for the next try");
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
      const id = `${hour}\u0000${entry.principal}\u0000${entry.keyId ?? ""}\u0000${entry.model ?? ""}\u0000${entry.upstream}`;
      // The usual case, a row this hour already has: four additions, no allocation.
      const held = rows.get(id);
      if (held) {
        addCounts(held, entry);
        return;
      }
      const row: Row = {
        hour,
        principal: entry.principal,
        keyId: entry.keyId,
        model: entry.model,
        upstream: entry.upstream,
        requests: entry.requests,
        promptTokens: entry.promptTokens,
        completionTokens: entry.completionTokens,
        costNanos: entry.costNanos,
      };
      if (!add(rows, id, row)) drop(1);
    },
    flush,
    pending: () => rows.size,
    get dropped() {
      return dropped;
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      await flush();
      if (rows.size > 0) log.error({ rows: rows.size }, "closing with usage not written: it is lost");
    },
  };
}
