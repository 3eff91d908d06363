import type { BlockList } from "node:net";
import { QuotaExceededError, QuotaUnavailableError } from "../errors.js";
import type { User } from "../user.js";
import { anonymousAddress, clientKey } from "./client-key.js";
import { rateLimit, rateLimitPolicy, type LimitState } from "./headers.js";
import { windowEnd, windowStart, type Limit } from "./limits.js";
import type { CounterCheck, QuotaStore } from "./store.js";

/** Most principals whose quota key a quota remembers. */
const PRINCIPAL_KEYS_MAX = 10_000;

/**
 * Pipeline stage 5: consume one request from each of the client's request
 * limits and check its token budgets, atomically in the shared store.
 */

/** A set of limits that apply together (anonymous, authenticated, or one tier). */
export interface LimitSet {
  /** `anonymous`, `authenticated`, or the tier's name. */
  readonly name: string;
  readonly limits: readonly Limit[];
}

/** A tier: limits chosen by a condition on the user. */
export interface QuotaTier extends LimitSet {
  /** True when this tier applies to `user`. */
  readonly matches: (user: User) => boolean;
}

export interface QuotaOptions {
  readonly store: QuotaStore;
  /** Limits for callers without a user (public paths skip quotas altogether). */
  readonly anonymous: LimitSet;
  /** Limits for authenticated callers that no tier matches. */
  readonly authenticated: LimitSet;
  /** Tried in order; the first that matches replaces `authenticated`. */
  readonly tiers?: readonly QuotaTier[];
  /** `closed` (default): a store failure refuses with 503. `open`: let the request through. */
  readonly failureMode?: "closed" | "open";
  /** Peers whose `X-Forwarded-For` / `Forwarded` is believed for anonymous callers. */
  readonly trustedProxies?: BlockList | undefined;
  /** Told about each store failure and what was done (`refused` / `admitted`); for logging. */
  readonly onStoreError?: (err: unknown, outcome: "refused" | "admitted") => void;
  readonly now?: () => number;
}

/** A request the quota admitted: the headers to send and, with token budgets, where tokens go. */
export interface QuotaGrant {
  /** `RateLimit` and `RateLimit-Policy` (absent when the store failed open). */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * Present when the client has token budgets: call with the `usage` total
   * of the response. Never rejects (a failure is reported to `onStoreError`).
   */
  readonly recordTokens: ((tokens: number) => Promise<void>) | undefined;
}

/** The client a quota check is about. */
export interface QuotaSubject {
  readonly user: User | undefined;
  readonly remoteAddress: string | undefined;
  readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>;
}

export interface Quota {
  /**
   * Consumes one request for the subject. Resolves with the grant; rejects
   * with `QuotaExceededError` (429) or `QuotaUnavailableError` (503).
   */
  check(subject: QuotaSubject): Promise<QuotaGrant>;
  /** How many requests were let through while the store was failing (`failure_mode: open`). */
  readonly failedOpen: number;
  /** Readiness: resolves when the store answers, rejects otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

interface CompiledSet extends LimitSet {
  readonly policy: string;
  readonly hasTokens: boolean;
}

function compileSet(set: LimitSet): CompiledSet {
  return { ...set, policy: rateLimitPolicy(set.limits), hasTokens: set.limits.some((l) => l.unit === "tokens") };
}

/**
 * Builds stage 5 over a store.
 *
 * @example
 * const quota = createQuota({ store, anonymous: { name: "anonymous", limits: compileLimits([{ requests: 100, period: "day" }]) }, authenticated });
 * const grant = await quota.check({ user, remoteAddress, headers });
 */
export function createQuota(options: QuotaOptions): Quota {
  const { store, failureMode = "closed", trustedProxies, onStoreError, now = Date.now } = options;
  const anonymous = compileSet(options.anonymous);
  const authenticated = compileSet(options.authenticated);
  const tiers = (options.tiers ?? []).map((t) => ({ ...compileSet(t), matches: t.matches }));
  let failedOpen = 0;

  function limitsFor(user: User | undefined): CompiledSet {
    if (!user) return anonymous;
    for (const tier of tiers) if (tier.matches(user)) return tier;
    return authenticated;
  }

  const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

  // A principal's key is a SHA-256 (client-key.ts): computed once per busy
  // client rather than on every request. Bounded: past the limit the memo
  // starts over, so memory stays flat however many distinct clients come.
  const principalKeys = new Map<string, string>();
  function principalKey(user: User): string {
    let key = principalKeys.get(user.principal);
    if (key === undefined) {
      key = clientKey(user, undefined);
      if (principalKeys.size >= PRINCIPAL_KEYS_MAX) principalKeys.clear();
      principalKeys.set(user.principal, key);
    }
    return key;
  }

  return {
    get failedOpen() {
      return failedOpen;
    },
    async check(subject) {
      const set = limitsFor(subject.user);
      if (set.limits.length === 0) return { headers: NO_HEADERS, recordTokens: undefined };
      const client = subject.user
        ? principalKey(subject.user)
        : clientKey(undefined, anonymousAddress(subject.remoteAddress, subject.headers, trustedProxies));
      const at = now();
      const counters: CounterCheck[] = set.limits.map((limit) => ({
        key: `${client}:${limit.name}:${windowStart(limit.period, at)}`,
        limit: limit.amount,
        consume: limit.unit === "requests",
        expiresAt: windowEnd(limit.period, at),
      }));

      let result;
      try {
        result = await store.hit(counters);
      } catch (err) {
        if (failureMode === "open") {
          failedOpen++;
          onStoreError?.(err, "admitted");
          return { headers: NO_HEADERS, recordTokens: set.hasTokens ? tokenRecorder(counters, set.limits) : undefined };
        }
        onStoreError?.(err, "refused");
        throw new QuotaUnavailableError();
      }

      const states: LimitState[] = set.limits.map((limit, i) => ({
        limit,
        remaining: Math.max(0, limit.amount - result.counts[i]!),
        resetMs: counters[i]!.expiresAt - at,
      }));
      const headers = { "ratelimit-policy": set.policy, ratelimit: rateLimit(states) };
      if (!result.admitted) {
        // Retry when the longest of the exhausted windows ends.
        let retryMs = 0;
        set.limits.forEach((limit, i) => {
          if (result.counts[i]! >= limit.amount) retryMs = Math.max(retryMs, states[i]!.resetMs);
        });
        throw new QuotaExceededError(Math.max(1, Math.ceil(retryMs / 1000)), headers);
      }
      return { headers, recordTokens: set.hasTokens ? tokenRecorder(counters, set.limits) : undefined };
    },
    ping: () => store.ping(),
    close: () => store.close(),
  };

  function tokenRecorder(counters: readonly CounterCheck[], limits: readonly Limit[]) {
    return async (tokens: number) => {
      if (!(tokens > 0)) return;
      for (let i = 0; i < limits.length; i++) {
        if (limits[i]!.unit !== "tokens") continue;
        try {
          await store.add(counters[i]!.key, tokens, counters[i]!.expiresAt);
        } catch (err) {
          onStoreError?.(err, "admitted");
        }
      }
    };
  }
}
