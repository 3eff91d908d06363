/**
 * Quota limits and their fixed windows.
 *
 * A limit is "at most N requests (or LLM tokens) per period". Windows are
 * fixed and aligned to the Unix epoch (a `day` window starts at 00:00 UTC),
 * so that every gateway replica sharing a store computes the same window for
 * the same instant without talking to the others. (Replicas need clocks kept
 * in step by NTP; a skew only matters within that skew of a window's edge.)
 */

/** The periods a limit may count over; Llama Stack has only `day`. */
export const PERIODS = ["second", "minute", "hour", "day"] as const;
export type Period = (typeof PERIODS)[number];

/** Length of each period in milliseconds. */
export const PERIOD_MS: Readonly<Record<Period, number>> = {
  second: 1000,
  minute: 60_000,
  hour: 3_600_000,
  day: 86_400_000,
};

/** What a limit counts: requests (consumed before forwarding) or LLM tokens (from `usage`, after the response). */
export type LimitUnit = "requests" | "tokens";

/** One compiled limit. */
export interface Limit {
  readonly unit: LimitUnit;
  /** Most requests / tokens per window. */
  readonly amount: number;
  readonly period: Period;
  /**
   * Stable name: the store key's part and the RateLimit policy name
   * (`requests-day`, `tokens-minute`; `-2`, `-3`... for repeats).
   */
  readonly name: string;
}

/** A limit as the config writes it: `{requests: 10, period: second}` or `{tokens: 100000, period: day}`. */
export type LimitInput = { readonly requests: number; readonly period: Period } | { readonly tokens: number; readonly period: Period };

/** Compiles config limits, naming each (`requests-second`, `tokens-day`, `requests-second-2`). */
export function compileLimits(inputs: readonly LimitInput[]): Limit[] {
  const seen = new Map<string, number>();
  return inputs.map((input) => {
    const unit: LimitUnit = "requests" in input ? "requests" : "tokens";
    const amount = "requests" in input ? input.requests : input.tokens;
    const base = `${unit}-${input.period}`;
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return Object.freeze({ unit, amount, period: input.period, name: n === 1 ? base : `${base}-${n}` });
  });
}

/** Start (ms since the epoch) of the window of `period` that contains `now`. */
export function windowStart(period: Period, now: number): number {
  const length = PERIOD_MS[period];
  return Math.floor(now / length) * length;
}

/** End (exclusive, ms since the epoch) of the window of `period` that contains `now`. */
export function windowEnd(period: Period, now: number): number {
  return windowStart(period, now) + PERIOD_MS[period];
}
