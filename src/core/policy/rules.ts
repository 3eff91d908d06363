import { z } from "zod";

/**
 * The shape of the policy rules of `server.auth`, described once: the config
 * schema validates with these, and compile.ts reads the types inferred from
 * them, so that what is validated and what is compiled cannot drift apart.
 */

/** The actions of the reference's `Action` enum. */
export const ACTIONS = ["create", "read", "update", "delete"] as const;
export type Action = (typeof ACTIONS)[number];

const actionSchema = z.enum(ACTIONS);

/** `when` / `unless`: one condition, or a list of them (Llama Stack accepts both). */
export const conditionsSchema = z.union([z.string(), z.array(z.string())]).optional();

const accessScopeSchema = z.strictObject({
  principal: z.string().min(1).optional().describe("only this principal (default: any)"),
  actions: z.union([actionSchema, z.array(actionSchema).min(1)]).describe("create, read, update, delete"),
  resource: z.string().min(1).optional().describe("type::id, type::* or regex:... (default: any)"),
});

/** One `access_policy` rule. */
export const accessRuleSchema = z.strictObject({
  permit: accessScopeSchema.optional(),
  forbid: accessScopeSchema.optional(),
  when: conditionsSchema.describe("conditions that must all hold for the rule to apply"),
  unless: conditionsSchema.describe("the rule applies unless all these conditions hold"),
  description: z.string().optional().describe("shown by `tollgate policy check` and in audit events"),
});

const routeScopeSchema = z.strictObject({
  paths: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).describe("exact path, prefix ending in *, * or regex:..."),
});

/** One `route_policy` rule. */
export const routeRuleSchema = z.strictObject({
  permit: routeScopeSchema.optional(),
  forbid: routeScopeSchema.optional(),
  when: conditionsSchema,
  unless: conditionsSchema,
  description: z.string().optional(),
});

/** `required_scopes`: route pattern → the scope the user's `scopes` attribute must contain. */
export const requiredScopesSchema = z.record(z.string(), z.string().min(1));

/** The same shape with read-only lists, so that a caller's `as const` rules compile too. */
type ReadonlyDeep<T> = T extends readonly (infer E)[] ? readonly ReadonlyDeep<E>[] : T extends object ? { [K in keyof T]: ReadonlyDeep<T[K]> } : T;

/** `when` / `unless` as written. */
export type ConditionsInput = ReadonlyDeep<NonNullable<z.infer<typeof conditionsSchema>>>;
/** One `access_policy` rule as written in the config. */
export type AccessRuleInput = ReadonlyDeep<z.infer<typeof accessRuleSchema>>;
/** One `route_policy` rule as written in the config. */
export type RouteRuleInput = ReadonlyDeep<z.infer<typeof routeRuleSchema>>;
