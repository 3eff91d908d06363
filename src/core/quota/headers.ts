import { PERIOD_MS, type Limit } from "./limits.js";

/**
 * The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers,
 * revisions 08–11): Structured Field lists, one item per policy.
 *
 *   RateLimit-Policy: "requests-day";q=1000;w=86400, "tokens-day";q=100000;w=86400;qu="tokens"
 *   RateLimit: "requests-day";r=998;t=3600, "tokens-day";r=99120;t=3600
 *
 * `q` quota, `w` window (s), `qu` quota unit (omitted for `requests`, the
 * draft's default), `r` remaining, `t` seconds until the window resets.
 */

/** One limit's state after a check. */
export interface LimitState {
  readonly limit: Limit;
  /** What is left in the current window (never below 0). */
  readonly remaining: number;
  /** Milliseconds until the window resets. */
  readonly resetMs: number;
}

/** `RateLimit-Policy` for these limits; constant per tier, so computed once. */
export function rateLimitPolicy(limits: readonly Limit[]): string {
  return limits
    .map((l) => `"${l.name}";q=${l.amount};w=${PERIOD_MS[l.period] / 1000}${l.unit === "tokens" ? ';qu="tokens"' : ""}`)
    .join(", ");
}

/** `RateLimit` for the current state of each limit. */
export function rateLimit(states: readonly LimitState[]): string {
  return states.map((s) => `"${s.limit.name}";r=${s.remaining};t=${Math.ceil(s.resetMs / 1000)}`).join(", ");
}
