import { AuthError, IdentityUnavailableError, StoreUnavailableError } from "../errors.js";
import { API_KEY_PATTERN, apiKeyStatus, hashApiKey } from "../keys.js";
import type { Logger } from "../log.js";
import type { ApiKeyRecord, RecordStore } from "../stores/types.js";
import { makeUser, type User } from "../user.js";
import type { AuthProvider, AuthRequest, ProviderObserver } from "./types.js";

/**
 * Most lookups cached at once. Each entry is a hash and at most one record
 * (well under 1 KiB), so the bound keeps the cache to a few MiB however many
 * random tokens a client sends.
 */
export const API_KEY_CACHE_MAX_ENTRIES = 10_000;

export interface ApiKeyProviderConfig {
  type: "api_key";
  /** How long a lookup (found or not) is reused, in ms; 0 disables the cache. */
  cache_ttl_ms: number;
}

export interface ApiKeyProviderDeps {
  store: RecordStore;
  log: Logger;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
  /** Bound on cached lookups; {@link API_KEY_CACHE_MAX_ENTRIES} by default. */
  maxCacheEntries?: number;
  /** Told about cache lookups (metrics). */
  observer?: ProviderObserver | undefined;
}

interface CacheEntry {
  /** When the lookup that produced this entry started: the entry is no fresher than that. */
  readonly lookedUpAt: number;
  readonly record: ApiKeyRecord | undefined;
}

/**
 * Authenticates Tollgate's own API keys (`tollgate keys create`) against the
 * record store.
 *
 * The bearer token is hashed and the hash looked up; the token is never
 * compared, stored or logged, and neither is its hash. Lookups, found and
 * not found, are cached for `cache_ttl_ms` (at most 1000 by the config
 * schema) so a revocation made by another process takes effect within that
 * time; concurrent requests with the same key share one lookup. A store that
 * cannot answer refuses with 503: never let a request through unchecked.
 *
 * @example
 * const provider = createApiKeyProvider({ type: "api_key", cache_ttl_ms: 500 }, { store, log });
 * const user = await provider.authenticate({ token: "tg_...", path: "/v1/models", query: "", headers: {} });
 */
export function createApiKeyProvider(
  config: { type: "api_key"; cache_ttl_ms: number },
  deps: ApiKeyProviderDeps,
): AuthProvider {
  const { store, now = Date.now, maxCacheEntries = API_KEY_CACHE_MAX_ENTRIES, observer } = deps;
  const log = deps.log.child({ component: "api_key" });
  const ttl = config.cache_ttl_ms;
  const authRequiredMessage =
    "Authentication required. Please provide a valid Tollgate API key as a Bearer token in the Authorization header";

  // Map keeps insertion order, and every write re-inserts, so the first key
  // is always the oldest entry: evicting it is O(1).
  const cache = new Map<string, CacheEntry>();
  const inFlight = new Map<string, Promise<ApiKeyRecord | undefined>>();
  let closed = false;

  function remember(hash: string, entry: CacheEntry): void {
    if (ttl <= 0 || closed) return;
    cache.delete(hash);
    cache.set(hash, entry);
    while (cache.size > maxCacheEntries) {
      const oldest = cache.keys().next().value as string;
      cache.delete(oldest);
    }
  }

  function lookUp(hash: string): Promise<ApiKeyRecord | undefined> {
    const cached = cache.get(hash);
    if (cached) {
      if (now() - cached.lookedUpAt < ttl) {
        observer?.cacheLookup("api_key", true);
        return Promise.resolve(cached.record);
      }
      cache.delete(hash);
    }
    observer?.cacheLookup("api_key", false);
    const pending = inFlight.get(hash);
    if (pending) return pending;
    const lookedUpAt = now();
    const lookup = store
      .findApiKeyByHash(hash)
      .then((record) => {
        remember(hash, { lookedUpAt, record });
        return record;
      })
      .finally(() => inFlight.delete(hash));
    inFlight.set(hash, lookup);
    return lookup;
  }

  async function authenticate(request: AuthRequest): Promise<User> {
    const token = request.token;
    if (token === undefined || token === "") throw new AuthError("missing_credential", authRequiredMessage);
    // Tollgate issues keys of exactly this shape: anything else cannot be one
    // of ours, so refuse it without a store round-trip or a cache slot.
    if (!API_KEY_PATTERN.test(token)) throw new AuthError("invalid_token", "Invalid API key");

    let record: ApiKeyRecord | undefined;
    try {
      record = await lookUp(hashApiKey(token));
    } catch (err) {
      // Already a 503 of the record store (the gateway bounds every store call), said as such.
      if (err instanceof StoreUnavailableError) throw new StoreUnavailableError("API key store unavailable");
      // The message only: a driver error names the statement, never its
      // parameters, but there is no reason to risk more.
      log.error({ error: err instanceof Error ? err.message : String(err) }, "API key lookup failed");
      throw new IdentityUnavailableError("API key store unavailable");
    }
    const status = record ? apiKeyStatus(record, now()) : "unknown";
    if (!record || status === "revoked" || status === "unknown") {
      log.debug({ keyId: record?.id, reason: status }, "API key refused");
      throw new AuthError("invalid_token", "Invalid API key");
    }
    if (status === "expired") {
      log.debug({ keyId: record.id, reason: status }, "API key refused");
      throw new AuthError("invalid_token", "API key has expired");
    }
    const user = makeUser(record.principal, record.attributes as Record<string, unknown>);
    return Object.freeze({ ...user, apiKey: Object.freeze({ id: record.id, limits: record.limits }) });
  }

  return {
    type: "api_key",
    credential: "bearer",
    authRequiredMessage,
    authenticate,
    async close() {
      // The store belongs to the caller, who closes it after the provider.
      closed = true;
      cache.clear();
    },
  };
}
