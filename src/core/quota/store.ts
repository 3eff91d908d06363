/**
 * What a quota store does: count, atomically, across every gateway process
 * that shares it.
 */

/** One counter a request is checked against. */
export interface CounterCheck {
  /** Store key: client, limit and window (`u_…:requests-day:1764028800000`). */
  readonly key: string;
  /** The request is refused when the counter already holds this much. */
  readonly limit: number;
  /** True: count this request (+1) when admitted. False: only read (token budgets). */
  readonly consume: boolean;
  /** When the window ends (ms since the epoch): the counter may be deleted from then on. */
  readonly expiresAt: number;
}

/** What a store answers to {@link QuotaStore.hit}. */
export interface HitResult {
  /** True when every counter was below its limit; the `consume` ones were then incremented. */
  readonly admitted: boolean;
  /** Each counter's value after the check, in the order given. */
  readonly counts: readonly number[];
}

export interface QuotaStore {
  /**
   * One atomic step: when every counter is below its limit, increments the
   * `consume` ones by one and admits; otherwise changes nothing and refuses.
   * N processes calling this concurrently admit exactly as many requests as
   * the limits allow. Rejects when the store cannot answer.
   */
  hit(counters: readonly CounterCheck[]): Promise<HitResult>;
  /** Adds `amount` (LLM tokens) to a counter, creating it for its window. */
  add(key: string, amount: number, expiresAt: number): Promise<void>;
  /** Readiness (GET /ready): resolves when the store takes a write (a probe row or key, rewritten), rejects otherwise. */
  ping(): Promise<void>;
  /** Releases connections and timers; idempotent. */
  close(): Promise<void>;
}
