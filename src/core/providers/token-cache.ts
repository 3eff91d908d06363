import { createHash } from "node:crypto";

/**
 * Most entries a provider's token cache holds. Each is a hash and a user (well
 * under 2 KiB), so the bound keeps memory to a few MiB however many distinct
 * tokens arrive.
 */
export const TOKEN_CACHE_MAX_ENTRIES = 10_000;

/** The SHA-256 of a token (base64url): what caches and in-flight maps are keyed by, never the token itself. */
export function tokenHash(token: string): string {
  return createHash("sha256").update(token).digest("base64url");
}

export interface TokenCache<T> {
  get(token: string): T | undefined;
  /** Remembers `value` until `expiresAt` (ms since the epoch); a time not in the future stores nothing. */
  set(token: string, value: T, expiresAt: number): void;
  clear(): void;
}

/**
 * Verified-token results keyed by the SHA-256 of the token, never the token
 * itself, so a heap dump holds no credential. Entries die at their own
 * expiry; the oldest is evicted beyond `maxEntries`.
 */
export function createTokenCache<T>(
  now: () => number,
  maxEntries = TOKEN_CACHE_MAX_ENTRIES,
  /** Told about every lookup (metrics: hit ratio). */
  onLookup?: (hit: boolean) => void,
): TokenCache<T> {
  const entries = new Map<string, { value: T; expiresAt: number }>();
  const key = tokenHash;
  return {
    get(token) {
      const k = key(token);
      const entry = entries.get(k);
      if (!entry) {
        onLookup?.(false);
        return undefined;
      }
      if (entry.expiresAt <= now()) {
        entries.delete(k);
        onLookup?.(false);
        return undefined;
      }
      onLookup?.(true);
      return entry.value;
    },
    set(token, value, expiresAt) {
      if (expiresAt <= now()) return;
      const k = key(token);
      entries.delete(k);
      entries.set(k, { value, expiresAt });
      while (entries.size > maxEntries) entries.delete(entries.keys().next().value as string);
    },
    clear() {
      entries.clear();
    },
  };
}
