import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import type { Config } from "../core/config/schema.js";
import { TollgateError, toErrorResponse } from "../core/errors.js";
import type { Pipeline, RequestContext } from "../core/pipeline.js";
import type { User } from "../core/user.js";
import type { Can } from "../core/can.js";
import { createTollgate, whenClientGone, type TollgateOptions } from "./node.js";

/**
 * Tollgate as a Fastify plugin (`tollgate/fastify`):
 *
 * ```ts
 * import Fastify from "fastify";
 * import { tollgatePlugin } from "tollgate/fastify";
 *
 * const app = Fastify();
 * await app.register(tollgatePlugin, { configFile: "tollgate.yaml" });
 * app.get("/v1/files/:id", async (request, reply) => {
 *   const { id } = request.params as { id: string };
 *   if (!app.tollgate.can(request.user, "read", `file::${id}`, ownerOf(id))) return reply.code(404).send();
 *   return { id, principal: request.user?.principal };
 * });
 * ```
 *
 * An `onRequest` hook runs stages 1–5 (canonical path, public paths,
 * authentication, route policy and scopes, quota) before any body is read,
 * answers a refusal with the OpenAI error envelope through `reply` (so
 * Fastify's `onSend`/`onResponse` hooks and logging see it), sets the quota's
 * RateLimit headers, and decorates `request.user` (undefined on public paths)
 * and `request.tollgate` (the whole {@link RequestContext}).
 *
 * The plugin skips Fastify's encapsulation, as `fastify-plugin` would: its
 * hook guards every route of the app it is registered on, wherever the
 * routes are declared. Tollgate is closed with the app (`onClose`).
 */

export type { Action, Can, Owner } from "../core/can.js";
export type { TollgateOptions } from "./node.js";
export type { User } from "../core/user.js";
export type { RequestContext } from "../core/pipeline.js";

/** What the plugin decorates the app with, as `app.tollgate`. */
export interface FastifyTollgate {
  /** The access policy inside a handler: `app.tollgate.can(request.user, "read", "file::f1", owner)`; see `Tollgate.can`. */
  readonly can: Can;
  /** The validated configuration (frozen). */
  readonly config: Config;
  /** The framework-free pipeline. */
  readonly pipeline: Pipeline;
}

declare module "fastify" {
  interface FastifyRequest {
    /** The authenticated caller (`tollgate/fastify`); undefined on public paths and when authentication is off. */
    user: User | undefined;
    /** What Tollgate established about this request: canonical path, user, quota headers (`tollgate/fastify`). */
    tollgate: RequestContext | undefined;
  }
  interface FastifyInstance {
    /** Tollgate's access policy and configuration (`tollgate/fastify`). */
    tollgate: FastifyTollgate;
  }
}

async function plugin(app: FastifyInstance, options: TollgateOptions): Promise<void> {
  const core = await createTollgate(options);
  app.addHook("onClose", async () => core.close());

  app.decorate("tollgate", { can: core.can, config: core.config, pipeline: core.pipeline } satisfies FastifyTollgate);
  app.decorateRequest("user", undefined);
  app.decorateRequest("tollgate", undefined);

  app.addHook("onRequest", async (request: FastifyRequest, reply: FastifyReply) => {
    // request.raw.url: the target as received (after Fastify's `rewriteUrl`, if any, which is what routing sees too).
    const gone = whenClientGone(reply.raw);
    let context: RequestContext;
    try {
      context = await core.authorize(request.raw, gone.signal);
    } catch (err) {
      if (!(err instanceof TollgateError)) core.log.error({ err }, "unexpected error in the pipeline; answered 500");
      const { status, headers, body } = toErrorResponse(err);
      return reply.code(status).headers(headers).send(body);
    } finally {
      gone.done();
    }
    if (context.responseHeaders) reply.headers(context.responseHeaders);
    request.user = context.user;
    request.tollgate = context;
  });
}

// Fastify's own markers (what fastify-plugin sets): skip encapsulation so the
// hook and decorators apply to the whole app, and name the plugin in errors.
Object.assign(plugin, {
  [Symbol.for("skip-override")]: true,
  [Symbol.for("fastify.display-name")]: "tollgate",
  [Symbol.for("plugin-meta")]: { name: "tollgate", fastify: "5.x" },
});

/**
 * The plugin; its options are `createTollgate`'s (`config` or `configFile`,
 * `log`, `store`, `now`). Registration fails with a `ConfigError` naming each
 * problem of an invalid configuration.
 *
 * @example await app.register(tollgatePlugin, { configFile: "tollgate.yaml" });
 */
export const tollgatePlugin: FastifyPluginAsync<TollgateOptions> = plugin;
