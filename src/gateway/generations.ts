import { releaseAll, sameJson, SharedPart } from "../core/carry-over.js";
import { upstreamsOf, type Config } from "../core/config/schema.js";
import { ConfigError } from "../core/errors.js";
import { createGeneration, type Generation, type GenerationObservers } from "../core/generation.js";
import type { Logger } from "../core/log.js";
import type { Pipeline } from "../core/pipeline.js";
import type { AuthProvider } from "../core/providers/types.js";
import type { ResilientRecordStore } from "../core/stores/resilient.js";
import { startTracer } from "../core/tracing/start.js";
import type { RequestTracer } from "../core/tracing/trace.js";
import { createAdminApi, type AdminApi } from "../admin/api.js";
import { createCatalog, type Catalog } from "./catalog.js";
import type { OwnEndpoints } from "./own-endpoints.js";
import { createModelLists, type ModelLists } from "./model-list.js";
import { createResourceGuard, type ResourceGuard } from "./resources.js";
import { createRouter, DEFAULT_HEALTH, Upstream, type HealthOptions, type Router } from "./upstreams.js";

/**
 * The gateway's generations of the config: the core {@link Generation}
 * (pipeline, provider, quota) plus what only the gateway has (the route
 * catalog, the resource guard, the upstream pool). A reload swaps the
 * current generation at once for new requests; requests keep the generation
 * they started with, and a retired generation lets go of its parts when its
 * last request ends. Parts whose config did not change are carried over, so
 * their caches and connections survive a reload.
 */
export interface GatewayGeneration {
  readonly config: Config;
  readonly core: Generation;
  readonly pipeline: Pipeline;
  readonly guard: ResourceGuard;
  /** The routes this generation forwards (`server.resources`). */
  readonly catalog: Catalog;
  /** The upstreams and how a request's model picks one (upstreams.ts). */
  readonly router: Router;
  /** With several upstreams: GET /v1/models merged from all of them (model-list.ts). */
  readonly models: ModelLists | undefined;
  /** `/admin/v1/...` and `/console/` (src/admin); undefined when `server.admin.enabled` is false. */
  readonly admin: AdminApi | undefined;
  /** Starts each request's trace (`tracing`); undefined when tracing is off. */
  readonly tracer: RequestTracer | undefined;
}

export interface Generations {
  /** The generation new requests start on. */
  readonly current: GatewayGeneration;
  /** A request starts on the current generation: it is held until {@link leave}. */
  enter(): GatewayGeneration;
  /** A request on `generation` has ended. */
  leave(generation: GatewayGeneration): void;
  /**
   * Builds the next generation from `config` and makes it current; the
   * previous one is released once its requests have ended. Settings that
   * need a new listener or process ({@link RESTART_KEYS}) are logged and keep
   * their running values. One reload at a time, in the order asked; rejects
   * (changing nothing) when the new config cannot be built.
   */
  reload(config: Config): Promise<void>;
  /** No more reloads; releases the current generation and waits for every retired one. */
  close(): Promise<void>;
}

export interface GenerationsOptions {
  readonly config: Config;
  readonly log: Logger;
  /** The record store, resilient (stores/resilient.ts); the gateway's, not released here. */
  readonly store: ResilientRecordStore | undefined;
  /** A provider given to the gateway; the gateway's, not released here. */
  readonly provider: AuthProvider | undefined;
  readonly own: OwnEndpoints;
  readonly observers: GenerationObservers;
  /** Passive health of the upstreams (upstreams.ts); default 5 failures in a row, then skipped 10 s. */
  readonly health?: HealthOptions | undefined;
  /** Told of each upstream failure, by upstream name (a metric). */
  readonly onUpstreamFailure?: ((name: string) => void) | undefined;
  /** Names the config in errors. */
  readonly source?: string | undefined;
  /** Trace spans dropped (`tracing`): the queue was full or the collector did not take them. */
  readonly onSpansDropped?: ((reason: "queue_full" | "export_failed", spans: number) => void) | undefined;
}

/** Settings a reload cannot change: they belong to the listener, the process or the record store. */
const RESTART_KEYS: [string, (config: Config) => unknown][] = [
  ["server.host", (c) => c.server.host],
  ["server.port", (c) => c.server.port],
  ["server.tls", (c) => c.server.tls],
  ["server.workers", (c) => c.server.workers],
  ["storage", (c) => c.storage],
  ["usage", (c) => c.usage],
  ["metrics", (c) => c.metrics],
  ["logging", (c) => c.logging],
];

/** What the swap keeps about each generation. */
interface Held {
  readonly generation: GatewayGeneration;
  /** Each upstream, by name: carried over to the next generation when its settings did not change. */
  readonly upstreams: ReadonlyMap<string, SharedPart<Upstream>>;
  readonly tracer: SharedPart<RequestTracer> | undefined;
  inFlight: number;
  retired: boolean;
  /** Its parts have been released; never twice. */
  released: Promise<void> | undefined;
}

/** Builds the first generation; rejects (having opened nothing that stays open) when it cannot be built. */
export async function startGenerations(options: GenerationsOptions): Promise<Generations> {
  const { log, own } = options;
  const held = new Map<GatewayGeneration, Held>();
  const releases = new Set<Promise<void>>();

  async function build(config: Config, previous?: Held): Promise<Held> {
    const catalog = createCatalog(config.server.resources);
    const core = await createGeneration({
      config,
      log: options.log,
      previous: previous?.generation.core,
      store: options.store,
      provider: options.provider,
      publicPaths: own.publicPaths,
      // Only declared routes are forwarded (unless `unlisted: allow`); the gateway's own endpoints are its own.
      declared: config.server.resources.unlisted === "deny" ? (method, matchPath) => own.declares(catalog, method, matchPath) : undefined,
      observers: options.observers,
    });
    let upstreams: Map<string, SharedPart<Upstream>>;
    try {
      upstreams = holdUpstreams(config, previous);
    } catch (err) {
      await core.close();
      throw err;
    }
    // A changed `tracing` section applies to new requests; an unchanged one keeps its tracer (and its queue).
    let tracer: SharedPart<RequestTracer> | undefined;
    try {
      tracer =
        previous?.tracer && sameJson(previous.generation.config.tracing, config.tracing)
          ? previous.tracer.hold()
          : config.tracing
            ? new SharedPart(await startTracer(config.tracing, { log: log.child({ component: "tracing" }), onDropped: options.onSpansDropped }))
            : undefined;
    } catch (err) {
      await releaseAll([...upstreams.values()], log);
      await core.close();
      throw err;
    }
    const router = createRouter([...upstreams.values()].map((part) => part.value), config.model_aliases);
    const models = router.single ? undefined : createModelLists(router.upstreams, log.child({ component: "upstreams" }));
    // Stage 6: the resource policy for what the catalog knows (resources.ts).
    const guard = createResourceGuard({ pipeline: core.pipeline, catalog, store: options.store, log: log.child({ component: "resources" }),
      aliases: config.model_aliases,
      // Several upstreams: a created resource remembers the one it was created through.
      upstreams: router.single ? undefined : new Set(router.upstreams.map((upstream) => upstream.name)),
    });
    const { onProviderError, onAuthenticated } = options.observers;
    const providerType = config.server.auth?.provider_config?.type ?? "none";
    const admin = config.server.admin.enabled
      ? createAdminApi({ config, provider: core.provider, store: options.store, catalog, onProviderError, onAuthenticated: (outcome, seconds) => onAuthenticated?.(providerType, outcome, seconds) })
      : undefined;
    const generation: GatewayGeneration = { config, core, pipeline: core.pipeline, guard, catalog, router, models, admin, tracer: tracer?.value };
    const entry: Held = { generation, upstreams, tracer, inFlight: 0, retired: false, released: undefined };
    held.set(generation, entry);
    return entry;
  }

  /**
   * The upstreams of `config`, in order: an upstream whose settings did not
   * change is the previous generation's (its pool, requests in flight and
   * health carry over); others are new. Throws a ConfigError naming the key
   * an upstream cannot be built from (a CA file that cannot be read), having
   * let go of what it held.
   */
  function holdUpstreams(config: Config, previous: Held | undefined): Map<string, SharedPart<Upstream>> {
    const out = new Map<string, SharedPart<Upstream>>();
    const list = upstreamsOf(config);
    try {
      list.forEach((settings, i) => {
        const before = previous?.upstreams.get(settings.name);
        if (before && sameJson(before.value.config, settings)) out.set(settings.name, before.hold());
        else {
          try {
            out.set(settings.name, new SharedPart(new Upstream(settings, options.health ?? DEFAULT_HEALTH, options.onUpstreamFailure)));
          } catch (err) {
            const at = config.upstreams === undefined ? "upstream" : `upstreams[${i}]`;
            throw new ConfigError(options.source ?? "config", [`${at}.${(err as Error).message}`]);
          }
        }
      });
    } catch (err) {
      void releaseAll([...out.values()], log);
      throw err;
    }
    return out;
  }

  /** Lets go of a generation's parts, closing those no other generation holds. */
  function release(entry: Held): Promise<void> {
    if (entry.released) return entry.released;
    held.delete(entry.generation);
    // A tracer let go for good exports its pending spans first (bounded: otel.ts).
    const done = releaseAll([...entry.upstreams.values(), entry.tracer], log).then(() => entry.generation.core.close());
    entry.released = done;
    releases.add(done);
    void done.finally(() => releases.delete(done));
    return done;
  }

  let current = await build(options.config);
  let reloading: Promise<void> = Promise.resolve();
  let closed = false;

  async function swap(config: Config): Promise<void> {
    if (closed) throw new Error("the gateway is shutting down");
    const previous = current;
    const running = previous.generation.config;
    const fixed = RESTART_KEYS.filter(([, read]) => !sameJson(read(running), read(config))).map(([name]) => name);
    if (fixed.length > 0) log.warn({ keys: fixed }, "reload: these settings need a restart and keep their running values");
    // Settings bound to the listener or the store keep their running values.
    const effective: Config = {
      ...config,
      server: { ...config.server, host: running.server.host, port: running.server.port, tls: running.server.tls, workers: running.server.workers },
      storage: running.storage,
      usage: running.usage,
      metrics: running.metrics,
      logging: running.logging,
    };
    current = await build(effective, previous);
    previous.retired = true;
    if (previous.inFlight === 0) await release(previous);
  }

  return {
    get current() {
      return current.generation;
    },
    enter() {
      current.inFlight++;
      return current.generation;
    },
    leave(generation) {
      const entry = held.get(generation);
      if (!entry) return;
      entry.inFlight--;
      if (entry.retired && entry.inFlight === 0) void release(entry);
    },
    reload(config) {
      const run = reloading.then(() => swap(config));
      reloading = run.catch(() => undefined);
      return run;
    },
    async close() {
      closed = true;
      await reloading;
      await release(current);
      // Generations retired by a reload whose last requests just ended.
      await Promise.all([...releases]);
    },
  };
}
