import { z } from "zod";
import type { KeyLimit, LimitPeriod } from "../stores/types.js";

/**
 * Quota limits and their fixed windows.
 *
 * A limit is "at most N requests (or LLM tokens, or spend) per period".
 * Windows are fixed and aligned to the Unix epoch (a `day` window starts at
 * 00:00 UTC, a `month` window at 00:00 UTC on the 1st),
 * so that every gateway replica sharing a store computes the same window for
 * the same instant without talking to the others. (Replicas need clocks kept
 * in step by NTP; a skew only matters within that skew of a window's edge.)
 */

/** The periods a limit may count over; Llama Stack has only `day`. `month` is the UTC calendar month. */
export const PERIODS = ["second", "minute", "hour", "day", "month"] as const satisfies readonly LimitPeriod[];
export type Period = LimitPeriod;

/**
 * Length of each period in milliseconds. A month's is nominal (30 days):
 * only `RateLimit-Policy`'s `w` uses it; its windows are calendar months
 * ({@link windowStart}).
 */
export const PERIOD_MS: Readonly<Record<Period, number>> = {
  second: 1000,
  minute: 60_000,
  hour: 3_600_000,
  day: 86_400_000,
  month: 30 * 86_400_000,
};

/**
 * What a limit counts: requests (consumed before forwarding), LLM tokens
 * (from `usage`, after the response) or spend (their cost from `pricing`).
 */
export type LimitUnit = "requests" | "tokens" | "spend";

/**
 * Spend is counted in billionths of the currency: counters are integers in
 * every quota store, and a request's cost is far below one unit.
 */
export const NANOS_PER_UNIT = 1_000_000_000;

/** One compiled limit. */
export interface Limit {
  readonly unit: LimitUnit;
  /** Most requests / tokens / spend (in billionths of the currency, {@link NANOS_PER_UNIT}) per window. */
  readonly amount: number;
  readonly period: Period;
  /**
   * Stable name: the store key's part and the RateLimit policy name
   * (`requests-day`, `tokens-minute`; `-2`, `-3`... for repeats).
   */
  readonly name: string;
}

/** A limit as the config writes it: `{requests: 10, period: second}`, `{tokens: 100000, period: day}`, `{spend: 25, period: month}`. */
export type LimitInput = KeyLimit;

const period = z.enum(PERIODS).describe("second, minute, hour, day or month (UTC calendar month)");

const requestLimit = z.strictObject({ requests: z.number().int().min(0).describe("most requests per period"), period });
const tokenLimit = z.strictObject({ tokens: z.number().int().min(0).describe("most LLM tokens (from `usage`) per period"), period });
const spendLimit = z.strictObject({ spend: z.number().min(0).finite().describe("most spend per period, in `pricing.currency`"), period });

/** Each form of limit by the unit it counts: validation names the field of the form the input chose. */
export const LIMIT_SCHEMAS = { requests: requestLimit, tokens: tokenLimit, spend: spendLimit } as const;

/** One limit, as `server.quota.limits`, tiers and per-key `limits` write it. */
export const limitSchema = z.union([requestLimit, tokenLimit, spendLimit]);

/** Compiles config limits, naming each (`requests-second`, `tokens-day`, `spend-month`, `requests-second-2`). */
export function compileLimits(inputs: readonly LimitInput[]): Limit[] {
  const seen = new Map<string, number>();
  return inputs.map((input) => {
    const unit: LimitUnit = "requests" in input ? "requests" : "tokens" in input ? "tokens" : "spend";
    const amount = "requests" in input ? input.requests : "tokens" in input ? input.tokens : Math.round(input.spend * NANOS_PER_UNIT);
    const base = `${unit}-${input.period}`;
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return Object.freeze({ unit, amount, period: input.period, name: n === 1 ? base : `${base}-${n}` });
  });
}

/** Start (ms since the epoch) of the window of `period` that contains `now`. */
export function windowStart(period: Period, now: number): number {
  if (period === "month") {
    const at = new Date(now);
    return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1);
  }
  const length = PERIOD_MS[period];
  return Math.floor(now / length) * length;
}

/** End (exclusive, ms since the epoch) of the window of `period` that contains `now`. */
export function windowEnd(period: Period, now: number): number {
  if (period === "month") {
    const at = new Date(now);
    return Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
  }
  return windowStart(period, now) + PERIOD_MS[period];
}
