import type { Context, MiddlewareHandler } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { TollgateError, toErrorResponse } from "../core/errors.js";
import type { PipelineRequest, RequestContext } from "../core/pipeline.js";
import type { User } from "../core/user.js";
import { createTollgate, handleOf, type TollgateHandle, type TollgateOptions } from "./node.js";

/**
 * Tollgate as Hono middleware (`tollgate/hono`):
 *
 * ```ts
 * import { Hono } from "hono";
 * import { serve } from "@hono/node-server";
 * import { tollgate, type TollgateEnv } from "tollgate/hono";
 *
 * const tg = await tollgate({ configFile: "tollgate.yaml" });
 * const app = new Hono<TollgateEnv>();
 * app.use("*", tg.middleware);
 * app.get("/v1/files/:id", (c) => {
 *   const id = c.req.param("id");
 *   if (!tg.can(c.get("user"), "read", `file::${id}`, ownerOf(id))) return c.notFound();
 *   return c.json({ id, principal: c.get("user")?.principal });
 * });
 * serve({ fetch: app.fetch, port: 3000 });
 * ```
 *
 * The middleware runs stages 1–5 (canonical path, public paths,
 * authentication, route policy and scopes, quota) on the Web `Request`,
 * answers a refusal with the OpenAI error envelope, and sets `user`
 * (undefined on public paths) and `tollgate` (the whole
 * {@link RequestContext}) as context variables, typed by {@link TollgateEnv}.
 * The quota's RateLimit headers go on whatever response follows.
 *
 * Served by `@hono/node-server`, the Node request (`c.env.incoming`) gives
 * the peer's address and the headers exactly as received, so that an identity
 * header sent twice is refused rather than merged. Elsewhere the Web
 * `Headers` join repeats with ", "; two `Authorization` headers are still
 * refused (the bearer parser takes no list). This module does not load
 * `@hono/node-server`.
 */

export type { Action, Can, Owner } from "../core/can.js";
export type { TollgateOptions } from "./node.js";
export type { User } from "../core/user.js";
export type { RequestContext } from "../core/pipeline.js";

/** The context variables the middleware sets: `c.get("user")`, `c.get("tollgate")`. */
export interface TollgateVariables {
  /** The authenticated caller; undefined on public paths and when authentication is off. */
  user: User | undefined;
  /** What Tollgate established about this request: canonical path, user, quota headers. */
  tollgate: RequestContext;
}

/** The Hono environment to declare the app with: `new Hono<TollgateEnv>()`. */
export interface TollgateEnv {
  Variables: TollgateVariables;
}

/** Tollgate bound to one configuration, for a Hono app; see {@link tollgate}. */
export interface HonoTollgate extends TollgateHandle {
  /** Runs the pipeline; refuses with the OpenAI error envelope or sets `user` and `tollgate` and calls `next()`. */
  readonly middleware: MiddlewareHandler<TollgateEnv>;
}

/**
 * Builds the middleware from a configuration (options as `createTollgate`).
 * Throws a `ConfigError` naming each problem.
 *
 * @example const tg = await tollgate({ configFile: "tollgate.yaml" }); app.use("*", tg.middleware);
 */
export async function tollgate(options: TollgateOptions): Promise<HonoTollgate> {
  const core = await createTollgate(options);

  const middleware: MiddlewareHandler<TollgateEnv> = async (c, next) => {
    let context: RequestContext;
    try {
      context = await core.pipeline.authorize(toPipelineRequest(c));
    } catch (err) {
      if (!(err instanceof TollgateError)) core.log.error({ err }, "unexpected error in the pipeline; answered 500");
      const { status, headers, body } = toErrorResponse(err);
      return c.json(body, status as ContentfulStatusCode, headers);
    }
    c.set("user", context.user);
    c.set("tollgate", context);
    const quotaHeaders = Object.entries(context.responseHeaders ?? {});
    for (const [name, value] of quotaHeaders) c.header(name, value);
    await next();
    // A handler that returns a Response of its own bypasses c.header(): set
    // what it lacks (an error from onError included: RateLimit goes on every answer).
    for (const [name, value] of quotaHeaders) if (!c.res.headers.has(name)) c.res.headers.set(name, value);
  };

  return { ...handleOf(core), middleware };
}

/** The slice of `@hono/node-server`'s `c.env.incoming` read here (an `IncomingMessage` or HTTP/2 request). */
interface NodeIncoming {
  rawHeaders?: unknown;
  socket?: { remoteAddress?: string | undefined } | undefined;
}

/**
 * The Web request as the pipeline reads it: method, path and query as Hono
 * routes them, headers with lower-case names, the peer's address and the
 * request's signal (aborted by `@hono/node-server` when the client leaves).
 */
export function toPipelineRequest(c: Context): PipelineRequest {
  const request = c.req.raw;
  const url = new URL(request.url);
  const incoming = nodeIncoming(c.env);
  const rawHeaders = incoming && Array.isArray(incoming.rawHeaders) ? (incoming.rawHeaders as unknown[]) : undefined;
  return {
    method: request.method,
    url: url.pathname + url.search,
    headers: rawHeaders && rawHeaders.every((h) => typeof h === "string") ? headersFromRaw(rawHeaders as string[]) : headersFromWeb(request.headers),
    remoteAddress: incoming?.socket?.remoteAddress,
    signal: request.signal,
  };
}

function nodeIncoming(env: unknown): NodeIncoming | undefined {
  if (typeof env !== "object" || env === null || !("incoming" in env)) return undefined;
  const incoming = (env as { incoming: unknown }).incoming;
  return typeof incoming === "object" && incoming !== null ? (incoming as NodeIncoming) : undefined;
}

/** Every header as received: one value as a string, a repeated header as the list of its values. */
function headersFromRaw(raw: readonly string[]): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name.startsWith(":")) continue; // HTTP/2 pseudo-headers: the method and path are read from the Request
    const value = raw[i + 1]!;
    const seen = headers[name];
    headers[name] = seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
  }
  return headers;
}

function headersFromWeb(webHeaders: Headers): Record<string, string> {
  const headers: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [name, value] of webHeaders) headers[name] = value;
  return headers;
}
