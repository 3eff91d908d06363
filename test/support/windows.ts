/**
 * Quota windows are fixed (UTC clock): a burst that straddles a window's end
 * is counted in two windows, and a test asserting an exact count would fail
 * once an hour by the clock, not by the code. Call this before such a burst.
 */

const PERIOD_MS = { second: 1000, minute: 60_000, hour: 3_600_000 } as const;

/**
 * Resolves at once when the current `period` window has more than `marginMs`
 * left; otherwise waits until the next window has begun.
 *
 * @example
 * await clearOfWindowEnd("hour", 30_000);
 * const statuses = await burst(400);
 */
export async function clearOfWindowEnd(period: keyof typeof PERIOD_MS, marginMs: number): Promise<void> {
  const length = PERIOD_MS[period];
  const left = length - (Date.now() % length);
  if (left > marginMs) return;
  await new Promise((resolve) => setTimeout(resolve, left + 50));
}
