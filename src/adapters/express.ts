import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { RequestContext } from "../core/pipeline.js";
import type { User as TollgateUser } from "../core/user.js";
import { authenticateAt, createTollgate, handleOf, type TollgateHandle, type TollgateOptions } from "./node.js";

/**
 * Tollgate as Express middleware (`tollgate/express`):
 *
 * ```ts
 * import express from "express";
 * import { tollgate } from "tollgate/express";
 *
 * const tg = await tollgate({ configFile: "tollgate.yaml" });
 * const app = express();
 * app.use(tg.middleware);            // 400/401/403/429/503 answered here, as OpenAI errors
 * app.get("/v1/files/:id", (req, res) => {
 *   if (!tg.can(req.user, "read", `file::${req.params.id}`, ownerOf(req.params.id))) return res.status(404).end();
 *   res.json({ id: req.params.id, principal: req.user?.principal });
 * });
 * ```
 *
 * The middleware runs stages 1–5 (canonical path, public paths,
 * authentication, route policy and scopes, quota) on `req.originalUrl`, so a
 * mount point (`app.use("/api", tg.middleware)`) cannot hide part of the path
 * from the route policy. It sets the quota's RateLimit headers on the
 * response, then `req.user` (undefined on public paths) and `req.tollgate`
 * (the whole {@link RequestContext}) for the handlers after it.
 */

export type { Action, Can, Owner } from "../core/can.js";
export type { TollgateOptions } from "./node.js";
export type { User } from "../core/user.js";
export type { RequestContext } from "../core/pipeline.js";

declare global {
  // Express's own extension point, the one Passport uses: `req.user` is an
  // `Express.User`, which Tollgate's user extends. Declared the same way, so
  // that both libraries' declarations merge instead of conflicting.
  namespace Express {
    interface User extends TollgateUser {}
    interface Request {
      /** The authenticated caller (`tollgate/express`); undefined on public paths and when authentication is off. */
      user?: User;
      /** What Tollgate established about this request: canonical path, user, quota headers (`tollgate/express`). */
      tollgate?: RequestContext;
    }
  }
}

/** Tollgate bound to one configuration, for an Express app; see {@link tollgate}. */
export interface ExpressTollgate extends TollgateHandle {
  /** Runs the pipeline; refuses with the OpenAI error envelope or sets `req.user` and calls `next()`. */
  readonly middleware: RequestHandler;
}

/**
 * Builds the middleware from a configuration (options as `createTollgate`).
 * Throws a `ConfigError` naming each problem.
 *
 * @example const tg = await tollgate({ configFile: "tollgate.yaml" }); app.use(tg.middleware);
 */
export async function tollgate(options: TollgateOptions): Promise<ExpressTollgate> {
  const core = await createTollgate(options);

  async function middleware(req: Request, res: Response, next: NextFunction): Promise<void> {
    const context = await authenticateAt(core, req, res, req.originalUrl);
    if (!context) return; // answered: the error envelope
    req.user = context.user;
    req.tollgate = context;
    next();
  }

  return { ...handleOf(core), middleware };
}
