import type { QuotaConfig } from "../config/schema.js";
import type { Logger } from "../log.js";
import { allHold, parseCondition, type Condition } from "../policy/conditions.js";
import { parseTrustedProxies } from "../providers/upstream-header.js";
import { compileLimits, type LimitInput } from "./limits.js";
import { createQuota, type Quota, type QuotaTier } from "./quota.js";
import type { QuotaStore } from "./store.js";

/**
 * Builds stage 5 from `server.quota`: opens the store it names and compiles
 * the limits. The Llama Stack keys become the first limit of each set
 * (`anonymous_max_requests` / `authenticated_max_requests` per `period`);
 * `limits` (or the first matching tier's) are added for authenticated clients.
 */
export async function quotaFromConfig(
  config: QuotaConfig,
  {
    log,
    now,
    store: given,
    onStoreError,
  }: {
    log: Logger;
    now?: () => number;
    /** A store to use instead of opening the one `kvstore` names (a reload keeps its store open). */
    store?: QuotaStore;
    /** Told about each store failure and what was done (`refused` / `admitted`), for metrics. */
    onStoreError?: (outcome: string) => void;
  },
): Promise<Quota> {
  const qlog = log.child({ component: "quota" });
  const store = given ?? (await openQuotaStore(config.kvstore, qlog));
  const base = (max: number): LimitInput[] => [{ requests: max, period: config.period }];
  const tiers: QuotaTier[] = config.tiers.map((tier) => {
    const conditions = (typeof tier.when === "string" ? [tier.when] : tier.when).map((text) => parseCondition(text) as Condition);
    return {
      name: tier.name,
      limits: compileLimits([...base(config.authenticated_max_requests), ...tier.limits]),
      matches: (user) => allHold(conditions, user, undefined),
    };
  });
  const failures = throttledWarn(qlog);
  return createQuota({
    store,
    anonymous: { name: "anonymous", limits: compileLimits(base(config.anonymous_max_requests)) },
    authenticated: { name: "authenticated", limits: compileLimits([...base(config.authenticated_max_requests), ...config.limits]) },
    tiers,
    failureMode: config.failure_mode,
    trustedProxies: config.trusted_proxies.length > 0 ? parseTrustedProxies(config.trusted_proxies) : undefined,
    onStoreError: (err, outcome) => {
      failures(err, outcome);
      onStoreError?.(outcome);
    },
    now,
  });
}

/**
 * Where API keys' own limits are counted when `server.quota` is absent: the
 * embedded SQLite store at its default path, opened only when a key with
 * limits is first used (a gateway whose keys have none never creates the file).
 */
export const KEY_LIMITS_KVSTORE: QuotaConfig["kvstore"] = { type: "sqlite", db_path: "./data/quota.db" };

/**
 * Stage 5 without `server.quota`: no limits of its own, only those of API
 * keys that have some (`limits` of a key), counted in {@link KEY_LIMITS_KVSTORE}.
 */
export function keyLimitsQuota({ log, store }: { log: Logger; store?: QuotaStore }): { quota: Quota; store: QuotaStore } {
  const qlog = log.child({ component: "quota" });
  const kvstore = store ?? lazyQuotaStore(() => openQuotaStore(KEY_LIMITS_KVSTORE, qlog));
  const failures = throttledWarn(qlog);
  const quota = createQuota({
    store: kvstore,
    anonymous: { name: "anonymous", limits: [] },
    authenticated: { name: "authenticated", limits: [] },
    onStoreError: (err, outcome) => failures(err, outcome),
  });
  return { quota, store: kvstore };
}

/** A store opened on first use; `ping` before that has nothing to check. */
function lazyQuotaStore(open: () => Promise<QuotaStore>): QuotaStore {
  let opened: Promise<QuotaStore> | undefined;
  let closed = false;
  const get = () => {
    if (closed) return Promise.reject(new Error("quota store is closed"));
    opened ??= open();
    // A failed open is tried again by the next request.
    opened.catch(() => (opened = undefined));
    return opened;
  };
  return {
    hit: async (counters) => (await get()).hit(counters),
    add: async (key, amount, expiresAt) => (await get()).add(key, amount, expiresAt),
    ping: async () => (opened ? (await opened).ping() : undefined),
    async close() {
      closed = true;
      if (opened) await (await opened.catch(() => undefined))?.close();
    },
  };
}

/** Opens the store `kvstore` names. Redis is loaded only when configured. */
export async function openQuotaStore(kvstore: QuotaConfig["kvstore"], log: Logger): Promise<QuotaStore> {
  if (kvstore.type === "sqlite") {
    const { openSqliteQuotaStore } = await import("./stores/sqlite.js");
    return openSqliteQuotaStore({ dbPath: kvstore.db_path, namespace: kvstore.namespace });
  }
  const { createRedisQuotaStore } = await import("./stores/redis.js");
  const password = kvstore.password;
  const connection = throttledWarn(log);
  return createRedisQuotaStore({
    location:
      kvstore.cluster
        ? { cluster: kvstore.cluster, password }
        : kvstore.sentinel
          ? { sentinel: { ...kvstore.sentinel, waitForReplicas: kvstore.sentinel.wait_for_replicas }, password }
          : kvstore.url !== undefined
            ? { url: kvstore.url, password }
            : { host: kvstore.host ?? "localhost", port: kvstore.port ?? 6379, password },
    namespace: kvstore.namespace,
    commandTimeoutMs: kvstore.command_timeout_ms,
    onError: (err) => connection(err, "connection"),
  });
}

/**
 * A warning per failure would flood the log while a store is down (one per
 * request); this logs the first at once, then at most one a second with how
 * many it stood for.
 */
function throttledWarn(log: Logger): (err: unknown, outcome: string) => void {
  let last = 0;
  let suppressed = 0;
  return (err, outcome) => {
    const now = Date.now();
    if (now - last < 1000) {
      suppressed++;
      return;
    }
    last = now;
    const message = err instanceof Error ? err.message : String(err);
    log.warn({ err: message, outcome, more: suppressed }, "quota store failed");
    suppressed = 0;
  };
}
