import assert from "node:assert/strict";

/**
 * Calls `probe` until `accept` holds for what it returns (something that
 * recovers in the background: a store, an identity provider, a reload
 * reaching every worker), every `intervalMs`; resolves with that value, or
 * fails after `timeoutMs` showing the last one.
 */
export async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  { timeoutMs = 10_000, intervalMs = 100 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (accept(value)) return value;
    if (Date.now() > deadline) assert.fail(`no accepted answer within ${timeoutMs} ms; last: ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
