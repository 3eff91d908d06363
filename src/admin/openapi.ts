import { VERSION } from "../version.js";

/**
 * The OpenAPI 3.1 document of the admin API, served at
 * `GET /admin/v1/openapi.json`. test/admin/ validates every response body
 * its tests receive against the schema given here for that path, method and
 * status: the document cannot drift from what the API answers. Response
 * objects are closed (`additionalProperties: false`) for that reason.
 */

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const iso = { type: "string", format: "date-time" };
const attributes = { type: "object", additionalProperties: { type: "array", items: { type: "string" } }, description: "attribute name -> values, e.g. {\"roles\": [\"admin\"]}" };
const json = (schema: object, description: string) => ({ description, content: { "application/json": { schema } } });
const error = (description: string) => json(ref("Error"), description);
const id = { name: "id", in: "path", required: true, schema: { type: "string" }, description: "the key's id (key_...)" };

/** A key as every endpoint shows it; the create and rotate answers add `key`. */
const KEY_PROPERTIES = {
  object: { const: "api_key" },
  id: { type: "string", pattern: "^key_" },
  principal: { type: "string" },
  attributes,
  name: { type: ["string", "null"] },
  prefix: { type: "string", description: "the secret's first characters, to recognise it" },
  created_at: iso,
  expires_at: { type: ["string", "null"], format: "date-time", description: "null: never expires" },
  revoked_at: { type: ["string", "null"], format: "date-time" },
  status: { enum: ["active", "revoked", "expired"] },
  limits: { type: "array", items: ref("Limit"), description: "limits of this key on top of its principal's quota" },
};
const KEY_FIELDS = Object.keys(KEY_PROPERTIES);

/** The refusals every guarded endpoint may answer. */
const REFUSALS = {
  "400": error("bad input: `error.param` names the field"),
  "401": error("no credential, or one the configured provider refuses"),
  "403": error("authenticated, but `server.admin.when` does not hold"),
  "503": error("the identity provider or the record store is unavailable"),
};

export const OPENAPI_DOCUMENT = Object.freeze({
  openapi: "3.1.0",
  info: {
    title: "Tollgate admin API",
    version: VERSION,
    description: "Keys, usage, policy checks and the running config of a Tollgate gateway (docs/admin.md). Every call but this document's needs a credential for which `server.admin.when` holds (default `user with admin in roles`).",
  },
  servers: [{ url: "/" }],
  security: [{ bearer: [] }],
  paths: {
    "/admin/v1/openapi.json": {
      get: { summary: "This document", security: [], responses: { "200": json({ type: "object" }, "the OpenAPI document") } },
    },
    "/admin/v1/keys": {
      post: {
        summary: "Create an API key; its secret (`key`) is shown only in this answer",
        requestBody: { required: true, content: { "application/json": { schema: ref("CreateKey") } } },
        responses: { "201": json(ref("ApiKeyWithSecret"), "the new key"), ...REFUSALS },
      },
      get: {
        summary: "List keys, newest first, revoked and expired included",
        parameters: [
          { name: "principal", in: "query", schema: { type: "string" }, description: "only this principal's keys" },
          { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 1000, default: 100 } },
          { name: "after", in: "query", schema: { type: "string" }, description: "the last id of the previous page" },
        ],
        responses: { "200": json(ref("KeyList"), "one page of keys"), ...REFUSALS },
      },
    },
    "/admin/v1/keys/{id}": {
      get: { summary: "One key, without its secret", parameters: [id], responses: { "200": json(ref("ApiKey"), "the key"), "404": error("unknown id"), ...REFUSALS } },
      delete: { summary: "Revoke a key (effective within a second everywhere)", parameters: [id], responses: { "200": json(ref("KeyDeleted"), "revoked"), "404": error("unknown id"), ...REFUSALS } },
    },
    "/admin/v1/keys/{id}/rotate": {
      post: {
        summary: "A new secret for the same key id; the old one keeps working for `grace`",
        parameters: [id],
        requestBody: { required: false, content: { "application/json": { schema: ref("Rotate") } } },
        responses: { "200": json(ref("ApiKeyWithSecret"), "the key with its new secret"), "404": error("unknown id"), ...REFUSALS },
      },
    },
    "/admin/v1/usage": {
      get: {
        summary: "Requests, tokens and cost, grouped",
        parameters: [
          { name: "group_by", in: "query", schema: { type: "string", default: "principal" }, description: "comma-separated: principal, key, model, upstream, day, hour" },
          { name: "from", in: "query", schema: iso, description: "inclusive; default: `to` minus 24 h" },
          { name: "to", in: "query", schema: iso, description: "exclusive; default: now" },
          { name: "principal", in: "query", schema: { type: "string" }, description: "only this principal's usage" },
        ],
        responses: { "200": json(ref("UsageList"), "one row per group"), ...REFUSALS },
      },
    },
    "/admin/v1/policy/check": {
      post: {
        summary: "Who may do what, and which rule decides",
        requestBody: { required: true, content: { "application/json": { schema: { oneOf: [ref("ResourceCheck"), ref("RouteCheck")] } } } },
        responses: { "200": json(ref("PolicyDecision"), "the decision"), ...REFUSALS },
      },
    },
    "/admin/v1/config": {
      get: { summary: "The running config, every secret replaced by \"***\"", responses: { "200": json({ type: "object" }, "the config after ${env} substitution and defaults"), ...REFUSALS } },
    },
  },
  components: {
    securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "a credential of the configured provider (an admin API key with `api_key`)" } },
    schemas: {
      Error: {
        type: "object",
        additionalProperties: false,
        required: ["error"],
        properties: {
          error: {
            type: "object",
            additionalProperties: false,
            required: ["message", "type", "code", "param"],
            properties: { message: { type: "string" }, type: { type: "string" }, code: { type: "string" }, param: { type: ["string", "null"] } },
          },
        },
      },
      ApiKey: { type: "object", additionalProperties: false, required: KEY_FIELDS, properties: KEY_PROPERTIES },
      ApiKeyWithSecret: {
        type: "object",
        additionalProperties: false,
        required: [...KEY_FIELDS, "key"],
        properties: { ...KEY_PROPERTIES, key: { type: "string", pattern: "^tg_", description: "the secret: shown here only" } },
      },
      Limit: {
        type: "object",
        additionalProperties: false,
        required: ["period"],
        minProperties: 2,
        maxProperties: 2,
        properties: {
          requests: { type: "integer", minimum: 0 },
          tokens: { type: "integer", minimum: 0 },
          spend: { type: "number", minimum: 0, description: "in pricing.currency" },
          period: { enum: ["second", "minute", "hour", "day", "month"] },
        },
      },
      KeyList: {
        type: "object",
        additionalProperties: false,
        required: ["object", "data", "has_more"],
        properties: { object: { const: "list" }, data: { type: "array", items: ref("ApiKey") }, has_more: { type: "boolean" } },
      },
      KeyDeleted: {
        type: "object",
        additionalProperties: false,
        required: ["id", "object", "deleted"],
        properties: { id: { type: "string" }, object: { const: "api_key" }, deleted: { const: true } },
      },
      CreateKey: {
        type: "object",
        additionalProperties: false,
        required: ["principal"],
        properties: {
          principal: { type: "string", minLength: 1 },
          attributes,
          name: { type: "string", minLength: 1, maxLength: 200, description: "a label for humans" },
          limits: { type: "array", items: ref("Limit") },
          expires_in: { type: "string", pattern: "^\\d+[smhdw]$", examples: ["30d"] },
        },
      },
      Rotate: {
        type: "object",
        additionalProperties: false,
        properties: { grace: { type: "string", pattern: "^\\d+[smhdw]$", examples: ["1h"], description: "how long the old secret keeps working (default: not at all)" } },
      },
      UsageRow: {
        type: "object",
        additionalProperties: false,
        required: ["requests", "prompt_tokens", "completion_tokens", "cost"],
        properties: {
          principal: { type: "string" },
          key: { type: ["string", "null"], description: "the API key id; null for other credentials" },
          model: { type: ["string", "null"] },
          upstream: { type: ["string", "null"] },
          day: { type: "string", pattern: "^\\d{4}-\\d{2}-\\d{2}$" },
          hour: iso,
          requests: { type: "integer", minimum: 0 },
          prompt_tokens: { type: "integer", minimum: 0 },
          completion_tokens: { type: "integer", minimum: 0 },
          cost: { type: "number", minimum: 0 },
        },
      },
      UsageList: {
        type: "object",
        additionalProperties: false,
        required: ["object", "data", "from", "to", "group_by"],
        properties: {
          object: { const: "list" },
          data: { type: "array", items: ref("UsageRow") },
          from: iso,
          to: iso,
          group_by: { type: "array", items: { enum: ["principal", "key", "model", "upstream", "day", "hour"] } },
        },
      },
      ResourceCheck: {
        type: "object",
        additionalProperties: false,
        required: ["principal", "action", "resource"],
        properties: {
          principal: { type: "string" },
          attributes,
          action: { enum: ["create", "read", "update", "delete"] },
          resource: { type: "string", examples: ["model::llama-3"] },
          owner: { oneOf: [{ type: "string" }, { type: "object", required: ["principal"], properties: { principal: { type: "string" }, attributes } }] },
        },
      },
      RouteCheck: {
        type: "object",
        additionalProperties: false,
        required: ["principal", "method", "path"],
        properties: { principal: { type: "string" }, attributes, method: { type: "string", examples: ["GET"] }, path: { type: "string", examples: ["/v1/files/file-abc"] } },
      },
      PolicyDecision: {
        type: "object",
        additionalProperties: false,
        required: ["decision", "rule", "stage", "resource", "action", "explanation"],
        properties: {
          decision: { enum: ["allow", "deny"] },
          rule: {
            oneOf: [
              { type: "null" },
              { type: "object", additionalProperties: false, required: ["index", "description"], properties: { index: { type: "integer", minimum: 0 }, description: { type: "string" } } },
            ],
            description: "the deciding rule, 0-based in its list; null when no rule decided",
          },
          stage: { enum: ["route_policy", "required_scopes", "access_policy"] },
          resource: { type: ["string", "null"] },
          action: { oneOf: [{ type: "null" }, { enum: ["create", "read", "update", "delete"] }] },
          explanation: { type: "string" },
        },
      },
    },
  },
});
