import { createCan, type Can } from "./can.js";
import { releaseAll, sameJson, SharedPart } from "./carry-over.js";
import type { Config } from "./config/schema.js";
import type { Logger } from "./log.js";
import { createPipeline, type Pipeline, type PipelineOptions } from "./pipeline.js";
import { policyOptions } from "./policy/from-config.js";
import { createProvider } from "./providers/index.js";
import type { AuthProvider, ProviderObserver } from "./providers/types.js";
import { keyLimitsQuota, openQuotaStore, quotaFromConfig } from "./quota/from-config.js";
import type { Quota } from "./quota/quota.js";
import type { QuotaStore } from "./quota/store.js";
import { runChecks, type Check, type CheckResult } from "./readiness.js";
import type { RecordStore } from "./stores/types.js";
import { createPricing, type Pricing } from "./usage/pricing.js";

/**
 * One generation of the configuration: everything the pipeline needs,
 * built from a Config in one place, for the gateway and every adapter
 * alike. A reload builds the next generation from the previous one,
 * carrying over the parts whose config did not change (the identity
 * provider with its caches, the quota store with its connection).
 */

/** What a host wants to hear about while a generation serves (the gateway's metrics and log). */
export interface GenerationObservers {
  /** Identity-service calls and cache lookups of the provider. */
  readonly provider?: ProviderObserver | undefined;
  /** Each authentication: the provider's type, its outcome and how long it took, in seconds. */
  readonly onAuthenticated?: ((providerType: string, outcome: "ok" | "refused" | "unavailable", seconds: number) => void) | undefined;
  /** A provider failure that became a 503 (never carries a token). */
  readonly onProviderError?: ((err: unknown) => void) | undefined;
  /** Each quota-store failure and what was done about it (`refused` / `admitted`). */
  readonly onQuotaStoreError?: ((outcome: string) => void) | undefined;
}

/** What {@link createGeneration} builds from. */
export interface GenerationOptions {
  readonly config: Config;
  /** Provider log lines go here; the quota store's under `component: quota`, decisions under `component: audit`. */
  readonly log: Logger;
  /** The generation this one follows: its parts whose config is unchanged are carried over. */
  readonly previous?: Generation | undefined;
  /** The record store (`api_key` reads keys from it; ping() checks it). The caller's: never closed here. */
  readonly store?: RecordStore | undefined;
  /** A provider to use whatever `server.auth` says. The caller's: never closed here. */
  readonly provider?: AuthProvider | undefined;
  /** Paths answered without authentication besides `server.public_paths` (a host's own endpoints). */
  readonly publicPaths?: readonly string[] | undefined;
  /** Which routes are declared (stage 4); see {@link PipelineOptions.declared}. Default: every route. */
  readonly declared?: PipelineOptions["declared"];
  readonly observers?: GenerationObservers | undefined;
  /** Clock in milliseconds; tests pass a fake one. */
  readonly now?: (() => number) | undefined;
}

export interface Generation {
  /** The configuration it was built from. */
  readonly config: Config;
  /** Stages 1–6 (core/pipeline.ts). */
  readonly pipeline: Pipeline;
  /** The identity provider; undefined when authentication is off. */
  readonly provider: AuthProvider | undefined;
  /** Stage 5; undefined without `server.quota` (with `api_key` auth, then, only keys' own limits). */
  readonly quota: Quota | undefined;
  /** `pricing`, compiled: the cost of usage and spend budgets. */
  readonly pricing: Pricing;
  readonly quotaStore: QuotaStore | undefined;
  /** Stage 6 inside a handler (core/can.ts). */
  readonly can: Can;
  /** The parts a next generation may carry over (see {@link SharedPart}). */
  readonly parts: { readonly provider?: SharedPart<AuthProvider> | undefined; readonly quotaStore?: SharedPart<QuotaStore> | undefined };
  /** Readiness: does each dependency (record store, quota store, identity provider) answer now? */
  ping(): Promise<CheckResult[]>;
  /** Lets go of its parts; those no other generation holds are closed. Idempotent. */
  close(): Promise<void>;
}

/**
 * Builds a generation from a validated config. On failure, lets go of
 * what it took and rethrows; `previous` is untouched either way.
 *
 * @example
 * const generation = await createGeneration({ config: loadConfig("tollgate.yaml"), log });
 * const context = await generation.pipeline.authorize(request);
 */
export async function createGeneration(options: GenerationOptions): Promise<Generation> {
  const { config, log, previous, store, observers = {} } = options;
  const taken: SharedPart<AuthProvider | QuotaStore>[] = [];
  const take = <T extends AuthProvider | QuotaStore>(part: SharedPart<T>): SharedPart<T> => {
    taken.push(part);
    return part;
  };
  try {
    const providerConfig = config.server.auth?.provider_config;
    let providerPart: SharedPart<AuthProvider> | undefined;
    if (!options.provider && providerConfig) {
      providerPart =
        previous?.parts.provider && sameJson(previous.config.server.auth?.provider_config, providerConfig)
          ? take(previous.parts.provider.hold())
          : take(new SharedPart(createProvider(providerConfig, { store, log, now: options.now, observer: observers.provider })));
    }
    const provider = options.provider ?? providerPart?.value;

    const quotaConfig = config.server.quota;
    let quotaStorePart: SharedPart<QuotaStore> | undefined;
    if (quotaConfig) {
      quotaStorePart =
        previous?.parts.quotaStore && sameJson(previous.config.server.quota?.kvstore, quotaConfig.kvstore)
          ? take(previous.parts.quotaStore.hold())
          : take(new SharedPart(await openQuotaStore(quotaConfig.kvstore, log.child({ component: "quota" }))));
    }
    // Stage 5: the counters live in the store, so new limits apply to the counts already made.
    let quota = quotaConfig
      ? await quotaFromConfig(quotaConfig, { log, now: options.now, store: quotaStorePart?.value, onStoreError: observers.onQuotaStoreError })
      : undefined;
    if (!quota && providerConfig?.type === "api_key") {
      // API keys' own limits apply without server.quota, counted in the embedded store (opened on first use).
      const carried = previous && !previous.config.server.quota ? previous.parts.quotaStore : undefined;
      const keyOnly = keyLimitsQuota({ log, store: carried?.value });
      quotaStorePart = take(carried ? carried.hold() : new SharedPart(keyOnly.store));
      quota = keyOnly.quota;
    }
    const quotaStore = quotaStorePart?.value;

    const providerType = providerConfig?.type ?? "none";
    const { onAuthenticated } = observers;
    const pipeline = createPipeline({
      publicPaths: [...config.server.public_paths, ...(options.publicPaths ?? [])],
      provider,
      onProviderError: observers.onProviderError,
      onAuthenticated: onAuthenticated ? (outcome, seconds) => onAuthenticated(providerType, outcome, seconds) : undefined,
      // Stage 4 (route_policy, required_scopes) and stage 6's rules, compiled when the config was validated. Audit: one line per decision.
      ...policyOptions(config.server.auth, log.child({ component: "audit" })),
      quota,
      declared: options.declared,
    });

    const checks: [CheckResult["name"], Check][] = [];
    if (store) checks.push(["record_store", async () => void (await store.ping())]);
    // The embedded store of keys' own limits (no server.quota) is opened on first use: not a dependency to wait for.
    if (quota && quotaConfig) checks.push(["quota_store", async () => void (await quota.ping())]);
    if (provider?.ready) checks.push(["identity_provider", () => provider.ready!()]);

    let closed: Promise<void> | undefined;
    return {
      config,
      pipeline,
      provider,
      quota,
      quotaStore,
      pricing: createPricing(config.pricing),
      can: createCan(pipeline, provider !== undefined),
      parts: { provider: providerPart, quotaStore: quotaStorePart },
      ping: () => runChecks(checks),
      close() {
        // The quota store before the provider, as they were opened in reverse.
        closed ??= releaseAll([quotaStorePart, providerPart], log);
        return closed;
      },
    };
  } catch (err) {
    await releaseAll(taken.reverse(), log);
    throw err;
  }
}
