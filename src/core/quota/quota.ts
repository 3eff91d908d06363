import type { BlockList } from "node:net";
import { BudgetExceededError, QuotaExceededError, QuotaUnavailableError } from "../errors.js";
import type { KeyLimit } from "../stores/types.js";
import type { User } from "../user.js";
import { anonymousAddress, clientKey } from "./client-key.js";
import { rateLimit, rateLimitPolicy, type LimitState } from "./headers.js";
import { compileLimits, windowEnd, windowStart, type Limit } from "./limits.js";
import type { CounterCheck, QuotaStore } from "./store.js";

/** Most principals whose quota key a quota remembers. */
const PRINCIPAL_KEYS_MAX = 10_000;
/** Most API keys whose compiled limits a quota remembers. */
const KEY_LIMITS_MAX = 10_000;

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
  /**
   * Present when the client has spend budgets: call with each answer's cost
   * in billionths of the currency. Never rejects.
   */
  readonly recordSpend: ((nanos: number) => Promise<void>) | undefined;
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
  /** The limits the RateLimit fields describe: request and token limits (a spend budget is not a rate). */
  readonly rated: readonly Limit[];
  readonly policy: string;
}

function compileSet(set: LimitSet): CompiledSet {
  const rated = set.limits.filter((l) => l.unit !== "spend");
  return { ...set, rated, policy: rateLimitPolicy(rated) };
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
  const NOTHING: QuotaGrant = Object.freeze({ headers: NO_HEADERS, recordTokens: undefined, recordSpend: undefined });

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

  // An API key's own limits, compiled once per key (and again if they change). Named
  // `key-...` and counted under the key's id, apart from its principal's counters.
  const keyLimits = new Map<string, { source: readonly KeyLimit[]; limits: Limit[] }>();
  function limitsOfKey(apiKey: NonNullable<User["apiKey"]>): Limit[] {
    const held = keyLimits.get(apiKey.id);
    if (held && held.source === apiKey.limits) return held.limits;
    const limits = compileLimits(apiKey.limits ?? []).map((l) => Object.freeze({ ...l, name: `key-${l.name}` }));
    if (keyLimits.size >= KEY_LIMITS_MAX) keyLimits.clear();
    keyLimits.set(apiKey.id, { source: apiKey.limits ?? [], limits });
    return limits;
  }

  function counterOf(client: string, limit: Limit, at: number): CounterCheck {
    return {
      key: `${client}:${limit.name}:${windowStart(limit.period, at)}`,
      limit: limit.amount,
      consume: limit.unit === "requests",
      expiresAt: windowEnd(limit.period, at),
    };
  }

  return {
    get failedOpen() {
      return failedOpen;
    },
    async check(subject) {
      const set = limitsFor(subject.user);
      const apiKey = subject.user?.apiKey;
      const ofKey = apiKey?.limits && apiKey.limits.length > 0 ? limitsOfKey(apiKey) : undefined;
      if (set.limits.length === 0 && !ofKey) return NOTHING;
      const at = now();
      // The set's limits first (their counts give the RateLimit fields), then the key's.
      const limits = ofKey ? [...set.limits, ...ofKey] : set.limits;
      const counters: CounterCheck[] = [];
      if (set.limits.length > 0) {
        const client = subject.user
          ? principalKey(subject.user)
          : clientKey(undefined, anonymousAddress(subject.remoteAddress, subject.headers, trustedProxies));
        for (const limit of set.limits) counters.push(counterOf(client, limit, at));
      }
      if (ofKey) for (const limit of ofKey) counters.push(counterOf(`k_${apiKey!.id}`, limit, at));

      let result;
      try {
        result = await store.hit(counters);
      } catch (err) {
        if (failureMode === "open") {
          failedOpen++;
          onStoreError?.(err, "admitted");
          return { headers: NO_HEADERS, recordTokens: adder(counters, limits, "tokens"), recordSpend: adder(counters, limits, "spend") };
        }
        onStoreError?.(err, "refused");
        throw new QuotaUnavailableError();
      }

      const states: LimitState[] = [];
      set.limits.forEach((limit, i) => {
        if (limit.unit !== "spend") states.push({ limit, remaining: Math.max(0, limit.amount - result.counts[i]!), resetMs: counters[i]!.expiresAt - at });
      });
      const headers = set.rated.length > 0 ? { "ratelimit-policy": set.policy, ratelimit: rateLimit(states) } : NO_HEADERS;
      if (!result.admitted) {
        // Retry when the longest of the exhausted windows ends; a spent budget says so in its code.
        let retryMs = 0;
        let budget = false;
        limits.forEach((limit, i) => {
          if (result.counts[i]! < limit.amount) return;
          retryMs = Math.max(retryMs, counters[i]!.expiresAt - at);
          if (limit.unit === "spend") budget = true;
        });
        const retryAfter = Math.max(1, Math.ceil(retryMs / 1000));
        throw budget ? new BudgetExceededError(retryAfter, headers) : new QuotaExceededError(retryAfter, headers);
      }
      return { headers, recordTokens: adder(counters, limits, "tokens"), recordSpend: adder(counters, limits, "spend") };
    },
    ping: () => store.ping(),
    close: () => store.close(),
  };

  /** What adds an answer's tokens or cost to the counters of that unit; undefined when there are none. */
  function adder(counters: readonly CounterCheck[], limits: readonly Limit[], unit: "tokens" | "spend") {
    if (!limits.some((l) => l.unit === unit)) return undefined;
    return async (amount: number) => {
      if (!(amount > 0)) return;
      // Every counter of the unit asked at once: a store that answers in order (the SQLite thread, one Redis
      // connection) adds them all before it sees a check asked for afterwards, never one of them alone.
      const adds: Promise<void>[] = [];
      for (let i = 0; i < limits.length; i++) {
        if (limits[i]!.unit !== unit) continue;
        adds.push(store.add(counters[i]!.key, amount, counters[i]!.expiresAt).catch((err: unknown) => onStoreError?.(err, "admitted")));
      }
      await Promise.all(adds);
    };
  }
}
