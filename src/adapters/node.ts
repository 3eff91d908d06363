import type { IncomingMessage, ServerResponse } from "node:http";
import { loadConfig, validateConfig } from "../core/config/load.js";
import type { Config, ConfigInput } from "../core/config/schema.js";
import { TollgateError, toErrorResponse } from "../core/errors.js";
import { createLogger, type Logger } from "../core/log.js";
import type { Can } from "../core/can.js";
import { createGeneration, type Generation } from "../core/generation.js";
import { toPipelineRequest } from "../core/node-request.js";
import type { Pipeline, RequestContext } from "../core/pipeline.js";
import type { RecordStore } from "../core/stores/types.js";

export type { Action, Can, Owner } from "../core/can.js";
export { toPipelineRequest };

/**
 * Tollgate's pipeline for a plain `node:http` server, without the gateway:
 *
 * ```ts
 * const tollgate = await createTollgate({ configFile: "tollgate.yaml" });
 * http.createServer(async (req, res) => {
 *   const ctx = await tollgate.authenticate(req, res);
 *   if (!ctx) return; // already answered: 401, 503, ... as an OpenAI error
 *   res.end(`hello ${ctx.user?.principal}`);
 * }).listen(3000);
 * ```
 *
 * Only the `server` section (auth provider, public paths), `storage` (for
 * `api_key`) and `logging` of the config matter here; `upstream` is the
 * gateway's.
 */

export interface TollgateOptions {
  /**
   * The configuration as an object, in the shape of `tollgate.yaml`; it is
   * validated and its defaults filled in (no `${env.NAME}` substitution: read
   * `process.env` in code). Give this or `configFile`.
   */
  config?: ConfigInput | Config;
  /** A `tollgate.yaml` to load, with `${env.NAME}` substitution. Give this or `config`. */
  configFile?: string;
  /** Where log lines go; default: JSON lines on stdout at `logging.level`, credentials redacted. */
  log?: Logger;
  /**
   * The record store the `api_key` provider looks keys up in. Default: the
   * one `storage` describes, opened here and closed by `close()`. A store you
   * pass stays yours to close.
   */
  store?: RecordStore;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
}

/** The pipeline bound to one configuration; see {@link createTollgate}. */
export interface Tollgate {
  /** The validated configuration in use (frozen). */
  readonly config: Config;
  /** The framework-free pipeline, for adapters of other frameworks. */
  readonly pipeline: Pipeline;
  /**
   * Runs the pipeline on a request. Resolves with what it established, or
   * rejects with a `TollgateError` (turn it into a response with {@link sendError}).
   * Pass `signal` to stop waiting for the identity service when the client goes away.
   */
  authorize(req: IncomingMessage, signal?: AbortSignal): Promise<RequestContext>;
  /**
   * Runs the pipeline and, when it refuses, answers the request itself with
   * the OpenAI error envelope (status, `WWW-Authenticate` on 401, ...).
   * Resolves with the context when the request may proceed, `undefined` when
   * the response has already been sent.
   */
  authenticate(req: IncomingMessage, res: ServerResponse): Promise<RequestContext | undefined>;
  /**
   * The access policy (stage 6) inside a handler: may `user` perform `action`
   * on `resource` (`type::id`), owned by `owner` (`{principal, attributes}`
   * of its creator; absent: unowned)? Every decision goes to the audit log.
   * No user is denied, unless authentication is off (no `server.auth`).
   *
   * @example tollgate.can(ctx.user, "read", "file::f1", { principal: "alice", attributes: { teams: ["ml"] } })
   */
  readonly can: Can;
  /** The logger Tollgate writes with (component `tollgate`); adapters log their refusals' causes with it. */
  readonly log: Logger;
  /** Closes the provider's connections, the quota store and the record store Tollgate opened (after your server has closed); idempotent. */
  close(): Promise<void>;
}

/**
 * What a framework adapter hands back beside its middleware (`tollgate/express`,
 * `tollgate/hono`): the parts of {@link Tollgate} a handler or a shutdown uses.
 */
export type TollgateHandle = Pick<Tollgate, "can" | "config" | "pipeline" | "log" | "close">;

/** The {@link TollgateHandle} of `core`. */
export function handleOf(core: Tollgate): TollgateHandle {
  return { can: core.can, config: core.config, pipeline: core.pipeline, log: core.log, close: () => core.close() };
}

/**
 * Builds the provider `server.auth` describes (opening the record store when
 * it is `api_key`) and the pipeline around it. Throws a `ConfigError` for an
 * invalid configuration, naming each path.
 *
 * @example
 * const tollgate = await createTollgate({
 *   config: { server: { auth: { provider_config: { type: "custom", endpoint: "http://127.0.0.1:9000/validate" } } } },
 * });
 */
export async function createTollgate(options: TollgateOptions): Promise<Tollgate> {
  const config = resolveConfig(options);
  const log = (options.log ?? createLogger(config.logging.level)).child({ component: "tollgate" });
  const providerConfig = config.server.auth?.provider_config;
  if (!providerConfig) log.warn("no server.auth in the configuration: authentication is off, every request passes");

  let ownedStore: RecordStore | undefined;
  let store = options.store;
  if (providerConfig?.type === "api_key" && !store) {
    // Loaded only when needed, so that users of the other providers never
    // load a database driver.
    const { openRecordStore } = await import("../core/stores/index.js");
    store = ownedStore = await openRecordStore(config.storage);
  }

  // The same generation the gateway builds: provider, stage 5 (`server.quota`,
  // whose RateLimit headers authenticate() sets on `res`), the compiled policies.
  // Stage 6 is pipeline.checkAccess(context, action, { key, owner }) (or `can`)
  // for the resources the application knows.
  let generation: Generation;
  try {
    generation = await createGeneration({
      config,
      log,
      store,
      now: options.now,
      observers: { onProviderError: (err) => log.error({ err }, "authentication provider failed; answered 503") },
    });
  } catch (err) {
    await ownedStore?.close();
    throw err;
  }
  const { pipeline } = generation;

  let closing: Promise<void> | undefined;

  const tollgate: Tollgate = {
    config,
    pipeline,
    log,
    can: generation.can,
    authorize(req, signal) {
      return pipeline.authorize(toPipelineRequest(req, signal));
    },
    authenticate(req, res) {
      return authenticateAt(tollgate, req, res, req.url ?? "/");
    },
    close() {
      closing ??= (async () => {
        try {
          await generation.close();
        } finally {
          await ownedStore?.close();
        }
      })();
      return closing;
    },
  };
  return tollgate;
}

/**
 * `tollgate.authenticate(req, res)` with the request target to check given
 * apart: Express strips a mount point from `req.url`, and the path checked
 * must be the one the client asked for (`req.originalUrl`). Adapters only.
 */
export async function authenticateAt(tollgate: Tollgate, req: IncomingMessage, res: ServerResponse, url: string): Promise<RequestContext | undefined> {
  const gone = whenClientGone(res);
  try {
    const context = await tollgate.pipeline.authorize({ ...toPipelineRequest(req, gone.signal), url });
    if (context.responseHeaders && !res.headersSent) {
      for (const [name, value] of Object.entries(context.responseHeaders)) res.setHeader(name, value);
    }
    return context;
  } catch (err) {
    if (!(err instanceof TollgateError)) tollgate.log.error({ err }, "unexpected error in the pipeline; answered 500");
    sendError(res, err);
    return undefined;
  } finally {
    gone.done();
  }
}

/**
 * A signal aborted when `res` closes before it was sent: the client went
 * away, so stop waiting on the identity service for it. Call `done()` once
 * the pipeline has answered. Adapters only.
 */
export function whenClientGone(res: ServerResponse): { signal: AbortSignal; done(): void } {
  const controller = new AbortController();
  const onClose = () => {
    if (!res.writableEnded) controller.abort();
  };
  res.once("close", onClose);
  return { signal: controller.signal, done: () => res.off("close", onClose) };
}

function resolveConfig({ config, configFile }: TollgateOptions): Config {
  if (config !== undefined && configFile !== undefined) throw new TypeError("createTollgate: give either config or configFile, not both");
  if (configFile !== undefined) return loadConfig(configFile);
  if (config !== undefined) return validateConfig(config, "createTollgate config");
  throw new TypeError("createTollgate: give config (an object) or configFile (a path to tollgate.yaml)");
}

/**
 * Answers with the OpenAI error envelope for `err` (`toErrorResponse`):
 * a `TollgateError`'s status, headers and safe message, or a bare 500 for
 * anything else. When the response has already started it can only be cut.
 */
export function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { status, headers, body } = toErrorResponse(err);
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, "content-length": Buffer.byteLength(text) });
  res.end(text);
}
