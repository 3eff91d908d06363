import { createLocalJWKSet, errors as joseErrors, type JSONWebKeySet, type JWK, type JWTVerifyGetKey } from "jose";
import { IdentityUnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { isPlainObject, OutboundError, parseJson, READY_CACHE_MS, type HttpClient } from "./http.js";

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
  /**
   * `algorithms` pins HMAC (HS256/384/512): tokens are verified with the set's
   * `oct` keys, and only with them. Otherwise only public keys are used (jose's
   * local key set), so an `oct` key never verifies an RS/ES/EdDSA token.
   */
  hmac?: boolean;
  /** How long a readiness answer is reused, in ms ({@link READY_CACHE_MS}). */
  readyCacheMs?: number;
  now?: () => number;
}

/** The JWKS as jose's key resolver, with its cache, refresh policy and counters. */
export interface RemoteKeySet {
  /** For `jwtVerify`: resolves the key a token names, refreshing the set as policy allows. */
  getKey: JWTVerifyGetKey;
  /** How many fetches were started (for tests and metrics). */
  readonly fetches: number;
  /**
   * Readiness, "answering now": `undefined` when a fetch of the set succeeded
   * (keys loaded and the endpoint reachable); else a fixed reason word
   * (`unreachable`, `timeout`, `http_503`, `invalid_key_set`, ...). One fetch
   * per {@link READY_CACHE_MS} at most, whatever the probe rate.
   */
  ready(): Promise<string | undefined>;
  /** Stops the background retry. */
  close(): void;
}

/** First wait before retrying a failed fetch in the background, in ms; doubled up to the cooldown. */
export const JWKS_RETRY_FIRST_MS = 1_000;

/**
 * A remote JWKS, cached. The set is fetched at creation (a failure is logged,
 * never fatal), again when older than `recheckMs`, and again when a token
 * names a `kid` the set lacks (keys rotated at the identity provider) — but
 * never more often than once per `cooldownMs`, and concurrent requests share
 * one fetch, so a flood of tokens with made-up kids cannot turn Tollgate into
 * an amplifier against the identity provider.
 *
 * After a failed fetch the set is fetched again in the background after 1 s,
 * then 2 s, 4 s, ... up to the cooldown, until one succeeds (logged), so a
 * gateway recovers on its own within seconds of the provider answering again,
 * with no request needed (jose's `remote.ts` waits for the next request and
 * the cooldown).
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
  const readyCacheMs = options.readyCacheMs ?? READY_CACHE_MS;
  const resolverOf = options.hmac ? createOctKeyResolver : (set: JSONWebKeySet) => createLocalJWKSet(set);
  // Never below one second, whatever the cooldown (0 turns the cooldown off, not the backoff).
  const retryFirstMs = JWKS_RETRY_FIRST_MS;
  const retryMaxMs = Math.max(retryFirstMs, cooldownMs);

  let local: JWTVerifyGetKey | undefined;
  let fetchedAt = -Infinity;
  let attemptedAt = -Infinity;
  /** Why the last fetch failed (a fixed word), or undefined after a success. */
  let lastFailure: string | undefined;
  let failures = 0;
  let inFlight: Promise<void> | undefined;
  let fetches = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let retryMs = retryFirstMs;
  let closed = false;
  let readyAnswer: { at: number; reason: string | undefined } | undefined;

  function failed(reason: string, detail: Record<string, unknown>, message: string): void {
    lastFailure = reason;
    failures++;
    readyAnswer = { at: now(), reason };
    // The first failure is a warning; the background retries after it are not news until one succeeds.
    if (failures === 1) log.warn({ host, reason, ...detail, retry_ms: retryMs }, message);
    else log.debug({ host, reason, ...detail, failures, retry_ms: retryMs }, message);
    scheduleRetry();
  }

  function scheduleRetry(): void {
    if (closed || retryTimer) return;
    const delay = retryMs;
    retryMs = Math.min(retryMs * 2, retryMaxMs);
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void fetchNow();
    }, delay);
    retryTimer.unref();
  }

  async function fetchSet(): Promise<void> {
    fetches++;
    attemptedAt = now();
    let res;
    try {
      res = await http.request(uri, {
        headers: { accept: "application/json", ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
      });
    } catch (err) {
      const detail = err instanceof OutboundError ? err.detail : { message: String(err) };
      failed(err instanceof OutboundError ? err.kind : "unreachable", { err: detail }, "JWKS fetch failed");
      return;
    }
    if (res.status !== 200) {
      failed(`http_${res.status}`, { status: res.status }, "JWKS fetch answered no key set");
      return;
    }
    const data = parseJson(res.body);
    if (!isPlainObject(data) || !Array.isArray(data.keys)) {
      failed("invalid_key_set", { status: res.status }, "JWKS fetch answered no key set");
      return;
    }
    try {
      local = resolverOf(data as unknown as JSONWebKeySet);
    } catch {
      failed("invalid_key_set", {}, "JWKS fetch answered an invalid key set");
      return;
    }
    if (failures > 0) log.info({ host, failures, keys: data.keys.length }, "JWKS fetched again: identity provider keys available");
    else log.debug({ host, keys: data.keys.length }, "JWKS refreshed");
    lastFailure = undefined;
    failures = 0;
    retryMs = retryFirstMs;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = undefined;
    fetchedAt = now();
    readyAnswer = { at: fetchedAt, reason: undefined };
  }

  /** Fetches now, or joins the fetch already running; the cooldown does not apply (callers bound their own rate). */
  function fetchNow(): Promise<void> {
    inFlight ??= fetchSet().finally(() => (inFlight = undefined));
    return inFlight;
  }

  /** Fetches unless one is running (then joins it) or the cooldown forbids it. Resolves whether a fetch happened. */
  async function refresh(): Promise<boolean> {
    if (inFlight) {
      await inFlight;
      return true;
    }
    if (now() - attemptedAt < cooldownMs) return false;
    await fetchNow();
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
      if (lastFailure !== undefined) throw new IdentityUnavailableError("Identity provider keys unavailable");
      if (!refreshed) throw err;
      return await local(header, jws);
    }
  };

  // Fetched at start-up: the first request should not pay for it, and a
  // provider that is down shows in the log (and /ready) at once.
  void fetchNow();

  return {
    getKey,
    async ready() {
      if (readyAnswer && now() - readyAnswer.at < readyCacheMs) return readyAnswer.reason;
      // A fetch of the set itself is the cheapest proof of both halves: the
      // endpoint answers now, and it serves keys we can load.
      await fetchNow();
      return local ? lastFailure : (lastFailure ?? "not_loaded");
    },
    close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = undefined;
    },
    get fetches() {
      return fetches;
    },
  };
}

/**
 * The key resolver for a config that pins HMAC algorithms: only `oct` keys
 * whose `alg` (when set) is the token's, `use` (when set) is `sig`, and `kid`
 * is the token's (when it names one). `k` is read as base64url, or as plain
 * base64 as Llama Stack's python-jose accepts it. An empty secret is never a
 * key.
 */
function createOctKeyResolver(set: JSONWebKeySet): JWTVerifyGetKey {
  const keys = set.keys.filter((jwk): jwk is JWK & { k: string } => isPlainObject(jwk) && jwk.kty === "oct" && typeof jwk.k === "string" && jwk.k !== "");
  return async (header) => {
    const candidates = keys.filter(
      (jwk) =>
        (header.kid === undefined || jwk.kid === header.kid) &&
        (jwk.alg === undefined || jwk.alg === header.alg) &&
        (jwk.use === undefined || jwk.use === "sig") &&
        (jwk.key_ops === undefined || jwk.key_ops.includes("verify")),
    );
    if (candidates.length === 0) throw new joseErrors.JWKSNoMatchingKey();
    if (candidates.length > 1) throw new joseErrors.JWKSMultipleMatchingKeys();
    const secret = Buffer.from(candidates[0]!.k, "base64");
    if (secret.length === 0) throw new joseErrors.JWKSNoMatchingKey();
    return new Uint8Array(secret);
  };
}
