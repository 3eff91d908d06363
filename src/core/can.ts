import { ACTIONS, type Action } from "./policy/compile.js";
import type { Owner } from "./policy/conditions.js";
import type { Pipeline, RequestContext } from "./pipeline.js";
import type { User } from "./user.js";

export type { Action } from "./policy/compile.js";
export type { Owner } from "./policy/conditions.js";

/**
 * Stage 6 inside a handler: may `user` perform `action` on `resource`
 * (`type::id`, e.g. `file::f1`), owned by `owner` (absent: unowned)?
 *
 * @example if (!can(req.user, "read", `file::${id}`, owners.get(id))) return notFound();
 */
export type Can = (user: User | undefined, action: Action, resource: string, owner?: Owner) => boolean;

/**
 * Builds {@link Can} on `pipeline.checkAccess`, so that the decision is the
 * one the gateway would make and is reported to the audit log the same way.
 *
 * `authenticated` says whether the configuration authenticates requests.
 * When it does, no user (a public path, an anonymous caller) is denied: the
 * pipeline's own rule, "no user allows", exists for authentication turned off
 * and must not make a public route the way around the access policy.
 */
export function createCan(pipeline: Pipeline, authenticated: boolean): Can {
  return function can(user, action, resource, owner) {
    // Checked at run time too: from JavaScript a typo ("raed") would otherwise
    // match no rule by accident rather than fail loudly.
    if (!ACTIONS.includes(action)) throw new TypeError(`can: unknown action ${JSON.stringify(action)}; expected one of ${ACTIONS.join(", ")}`);
    if (typeof resource !== "string" || !resource.includes("::")) {
      throw new TypeError(`can: resource ${JSON.stringify(resource)} is not of the form type::id (file::f1)`);
    }
    if (user === undefined && authenticated) return false;
    const context: RequestContext = { path: "", query: "", public: false, user };
    return pipeline.checkAccess(context, action, { key: resource, owner }).allowed;
  };
}
