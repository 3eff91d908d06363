import type { Config } from "../config/schema.js";
import type { AccessDecisionEvent, PipelineOptions } from "../pipeline.js";
import type { Logger } from "../log.js";
import { compileAccessPolicy, compileRequiredScopes, compileRoutePolicy } from "./compile.js";

/**
 * The compiled policies of a validated config's `server.auth`, as
 * {@link PipelineOptions}; with an audit logger, every decision becomes one
 * `access decision` log line (principal, action, resource, decision, rule).
 */
export function policyOptions(
  auth: NonNullable<Config["server"]["auth"]> | undefined,
  audit?: Logger,
): Pick<PipelineOptions, "accessPolicy" | "routePolicy" | "requiredScopes" | "onDecision"> {
  return {
    accessPolicy: compileAccessPolicy(auth?.access_policy ?? []),
    routePolicy: compileRoutePolicy(auth?.route_policy ?? []),
    requiredScopes: compileRequiredScopes(auth?.required_scopes ?? {}),
    onDecision: audit ? (event) => logDecision(audit, event) : undefined,
  };
}

/** One audit line per decision; the resource id and principal only, never a credential or a body. */
export function logDecision(audit: Logger, event: AccessDecisionEvent): void {
  const { decision } = event;
  audit.info(
    {
      audit: true,
      principal: event.principal,
      action: event.action,
      resource: event.resource,
      decision: decision.allowed ? "allow" : "deny",
      rule: decision.rule,
      rule_source: decision.source,
    },
    "access decision",
  );
}
