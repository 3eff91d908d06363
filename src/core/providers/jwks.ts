import { createLocalJWKSet, errors as joseErrors, type JSONWebKeySet, type JWTVerifyGetKey } from "jose";
import { IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { isPlainObject, OutboundError, parseJson, type HttpClient } from "./http.js";

export interface RemoteKeySetOptions {
  uri: URL;
  http: HttpClient;
  log: Logger;
  /** Refresh the set when it is older than this, in ms (`key_recheck_period`). */
  recheckMs: number;
  /** Least time between two fetches, in ms: a flood of unknown kids costs one fetch per cooldown. */
  cooldownMs: number;
  /** Sent as `Authorization: Bearer` with every fetch (`jwks.token`). */
  token?: string | undefined;
  now?: () => number;
}

/** The JWKS as jose's key resolver, with its cache, refresh policy and counters. */
export interface RemoteKeySet {
  /** For `jwtVerify`: resolves the key a token names, refreshing the set as policy allows. */
  getKey: JWTVerifyGetKey;
  /** How many fetches were started (for tests and metrics). */
  readonly fetches: number;
  /**
   * Readiness: `undefined` once a key set is loaded; otherwise tries a fetch
   * now (within the cooldown) and says why there are no keys.
   */
  ready(): Promise<string | undefined>;
}

/**
 * A remote JWKS, cached. The set is fetched on first use, again when older
 * than `recheckMs`, and again when a token names a `kid` the set lacks (keys
 * rotated at the identity provider) — but never more often than once per
 * `cooldownMs`, and concurrent requests share one fetch, so a flood of tokens
 * with made-up kids cannot turn Tollgate into an amplifier against the
 * identity provider.
 *
 * When a fetch fails, the keys already cached stay in use; a token that no
 * cached key can verify gets 503 (the identity provider is the problem, not
 * the token), or 401 when the set was fetched fine and just lacks its key.
 */
export function createRemoteKeySet(options: RemoteKeySetOptions): RemoteKeySet {
  const { uri, http, recheckMs, cooldownMs, token } = options;
  const now = options.now ?? Date.now;
  const log = options.log;
  const host = uri.host;

  let local: JWTVerifyGetKey | undefined;
  let fetchedAt = -Infinity;
  let attemptedAt = -Infinity;
  let lastFetchFailed = false;
  let inFlight: Promise<void> | undefined;
  let fetches = 0;

  async function fetchSet(): Promise<void> {
    fetches++;
    attemptedAt = now();
    let res;
    try {
      res = await http.request(uri, {
        headers: { accept: "application/json", ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
      });
    } catch (err) {
      lastFetchFailed = true;
      const detail = err instanceof OutboundError ? err.detail : { message: String(err) };
      log.warn({ host, err: detail }, "JWKS fetch failed");
      return;
    }
    const data = res.status === 200 ? parseJson(res.body) : undefined;
    if (!isPlainObject(data) || !Array.isArray(data.keys)) {
      lastFetchFailed = true;
      log.warn({ host, status: res.status }, "JWKS fetch answered no key set");
      return;
    }
    try {
      local = createLocalJWKSet(data as unknown as JSONWebKeySet);
    } catch {
      lastFetchFailed = true;
      log.warn({ host }, "JWKS fetch answered an invalid key set");
      return;
    }
    lastFetchFailed = false;
    fetchedAt = now();
    log.debug({ host, keys: data.keys.length }, "JWKS refreshed");
  }

  /** Fetches unless one is running (then joins it) or the cooldown forbids it. Resolves whether a fetch happened. */
  async function refresh(): Promise<boolean> {
    if (inFlight) {
      await inFlight;
      return true;
    }
    if (now() - attemptedAt < cooldownMs) return false;
    inFlight = fetchSet().finally(() => (inFlight = undefined));
    await inFlight;
    return true;
  }

  const getKey: JWTVerifyGetKey = async (header, jws) => {
    if (!local || now() - fetchedAt > recheckMs) await refresh();
    if (!local) throw new IdentityUnavailableError("Identity provider keys unavailable");
    try {
      return await local(header, jws);
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err;
      // An unknown kid: the provider may have rotated its keys since we looked.
      const refreshed = await refresh();
      // The set could not be fetched: whether this key exists is unknown, which is our problem, not the token's.
      if (lastFetchFailed) throw new IdentityUnavailableError("Identity provider keys unavailable");
      if (!refreshed) throw err;
      return await local(header, jws);
    }
  };

  return {
    getKey,
    async ready() {
      if (local) return undefined;
      await refresh();
      return local ? undefined : "JWKS not loaded";
    },
    get fetches() {
      return fetches;
    },
  };
}
