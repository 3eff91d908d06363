import { ForbiddenError } from "../core/errors.js";
import { createPipeline, type PipelineOptions, type PipelineRequest } from "../core/pipeline.js";
import { allHold, parseCondition, type Condition } from "../core/policy/conditions.js";
import type { AuthProvider } from "../core/providers/types.js";
import type { User } from "../core/user.js";

/**
 * Who may call the admin API: a user the configured provider authenticates
 * (any provider: API keys, JWTs, introspection, ...) for whom every
 * condition of `server.admin.when` holds. Nothing else of the pipeline runs:
 * no route policy, scopes or quotas, so that an operator can never lock
 * themselves out of the admin API with a policy or a quota.
 */
export interface AdminGuard {
  /** The admin user; throws 401 (no or bad credential), 503 (provider down) or 403 (not an admin). */
  admit(request: PipelineRequest): Promise<User>;
}

export function createAdminGuard(options: {
  provider: AuthProvider | undefined;
  when: string | readonly string[];
  onProviderError?: PipelineOptions["onProviderError"];
  onAuthenticated?: PipelineOptions["onAuthenticated"];
}): AdminGuard {
  const { provider } = options;
  // The schema has parsed them already (config/schema.ts); a condition that does not parse never gets here.
  const conditions = [options.when].flat().map((text) => parseCondition(text) as Condition);
  // Stages 1 and 3 only: canonical path, authentication.
  const pipeline = createPipeline({ publicPaths: [], provider, onProviderError: options.onProviderError, onAuthenticated: options.onAuthenticated });
  return {
    async admit(request) {
      // Fail closed: without authentication nobody can be shown to be an admin.
      if (!provider) throw new ForbiddenError("The admin API needs authentication: configure server.auth", "admin_unavailable");
      const { user } = await pipeline.authorize(request);
      if (!user || !allHold(conditions, user, undefined)) throw new ForbiddenError("Access denied: the admin API is for administrators", "admin_required");
      return user;
    },
  };
}
