import { isIP } from "node:net";
import { z } from "zod";
import { canonicalPath } from "../path.js";
import { DEFAULT_OAUTH2_CLAIMS_MAPPING } from "../providers/claims.js";
import { parseCondition } from "../policy/conditions.js";
import { limitSchema as quotaLimitSchema, PERIODS } from "../quota/limits.js";
import { ACTIONS, compileAccessPolicy, compileRequiredScopes, compileRoutePolicy, PolicyError } from "../policy/compile.js";
import { accessRuleSchema, requiredScopesSchema, routeRuleSchema } from "../policy/rules.js";
import { kvstoreReferenceSchema, llamaStorageSchema, resolveQuotaStore, resolveRecordStore } from "./llama-stack.js";

/**
 * The configuration schema: the single description of `tollgate.yaml`.
 * Types are inferred from it, `tollgate config schema` prints it as JSON
 * Schema, and `loadConfig` validates every file against it. Objects are
 * strict: an unknown key is an error, because a typo in a security setting
 * must never silently turn that setting off.
 */

const MiB = 1024 * 1024;

/** The paths that skip authentication when `server.public_paths` is not set. */
export const DEFAULT_PUBLIC_PATHS = ["/health", "/version", "/v1/health", "/v1/version"] as const;

/** Ollama's default address: where `tollgate serve` forwards when nothing else is configured. */
export const DEFAULT_UPSTREAM = "http://127.0.0.1:11434";

const httpUrl = z
  .string()
  .refine((s) => {
    try {
      const u = new URL(s);
      return u.protocol === "http:" || u.protocol === "https:";
    } catch {
      return false;
    }
  }, "expected an http:// or https:// URL");

const headerName = z
  .string()
  .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, "expected an HTTP header name")
  .transform((s) => s.toLowerCase());

/** `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8` */
const addressOrCidr = z.string().refine((s) => {
  const [address = "", prefix, ...rest] = s.split("/");
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  const bits = Number(prefix);
  return /^\d+$/.test(prefix) && bits <= (family === 4 ? 32 : 128);
}, "expected an IP address or CIDR such as 10.0.0.0/8");

/**
 * A secret written as a bare number in YAML (`api_key: 12345`) is parsed as a
 * number; a secret is always text. (`${env.NAME}` always gives text.)
 */
const secretString = z.union([z.string().min(1), z.number().transform(String)]);

const positiveMs = z.number().int().positive();

const tlsClient = {
  verify_tls: z.boolean().default(true).describe("verify the identity service's TLS certificate"),
  tls_cafile: z.string().min(1).optional().describe("PEM file of CA certificates to trust for the identity service"),
};

export const customProviderSchema = z
  .strictObject({
    type: z.literal("custom"),
    endpoint: httpUrl.describe("URL that receives POST {api_key, request: {path, headers, params}}"),
    timeout_ms: positiveMs.default(10_000).describe("give up on the endpoint after this long (then 503)"),
    ...tlsClient,
  })
  .describe("Validate bearer tokens against your own HTTP endpoint (Llama Stack's custom provider)");

export const upstreamHeaderProviderSchema = z
  .strictObject({
    type: z.literal("upstream_header"),
    principal_header: headerName.describe("header holding the principal, set by the trusted proxy in front"),
    attributes_header: headerName
      .optional()
      .describe("header holding a JSON object of string lists, e.g. {\"roles\": [\"admin\"]}"),
    trusted_proxies: z
      .array(addressOrCidr)
      .optional()
      .describe("only peers in these addresses/CIDRs may assert identity; others get 401 (default: loopback only, 127.0.0.0/8 and ::1)"),
  })
  .describe("Trust identity headers set by an authenticating proxy in front of Tollgate");

export const apiKeyProviderSchema = z
  .strictObject({
    type: z.literal("api_key"),
    cache_ttl_ms: z
      .number()
      .int()
      .min(0)
      .max(1000)
      .default(500)
      .describe("how long a key lookup is reused; bounds how fast revocation takes effect (at most 1000)"),
  })
  .describe("Tollgate's own API keys, issued by `tollgate keys create` and stored hashed in `storage`");

/** JWS algorithms `oauth2_token` accepts by default: the asymmetric ones. Never `none`. */
export const ASYMMETRIC_JWS_ALGORITHMS = [
  "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
] as const;

/**
 * HMAC algorithms, accepted only when `algorithms` pins them (never by
 * default, never beside an asymmetric one): then `oct` keys from the JWKS
 * verify tokens, as Llama Stack accepts. The key type is checked both ways,
 * so the classic forgery (HS256 signed with an RSA public key) stays closed.
 */
export const HMAC_JWS_ALGORITHMS = ["HS256", "HS384", "HS512"] as const;

/** True for HS256/HS384/HS512. */
export function isHmacAlgorithm(alg: string): boolean {
  return (HMAC_JWS_ALGORITHMS as readonly string[]).includes(alg);
}

/** `cache_ttl_ms` of `oauth2_token` when unset: JWTs are reused 30 s; introspection asks every time (as the reference). */
export const DEFAULT_JWT_CACHE_TTL_MS = 30_000;
export const DEFAULT_INTROSPECTION_CACHE_TTL_MS = 0;

/** `claims_mapping`: claim path (dot paths reach nested claims) → attribute name; Llama Stack's defaults. */
const claimsMapping = (defaults: Record<string, string>) =>
  z
    .record(z.string().min(1), z.string().min(1, "claims_mapping value cannot be empty"))
    .default(defaults)
    .describe("claim (dot path into nested claims) → attribute name; string claims split on whitespace");

const outboundTimeout = positiveMs.default(10_000).describe("give up on the identity service after this long (then 503)");

export const oauth2TokenProviderSchema = z
  .strictObject({
    type: z.literal("oauth2_token"),
    jwks: z
      .strictObject({
        uri: httpUrl.describe("the JWKS URI, e.g. https://idp/realms/x/protocol/openid-connect/certs"),
        key_recheck_period: z.number().positive().default(3600).describe("seconds between refreshes of the key set"),
        token: secretString.optional().describe("sent as Bearer when fetching the JWKS (Kubernetes' JWKS needs one)"),
        refresh_cooldown_ms: z
          .number()
          .int()
          .min(0)
          .default(30_000)
          .describe("least time between two fetches of the JWKS, however many unknown kids arrive"),
      })
      .optional()
      .describe("verify JWT access tokens locally with the identity provider's public keys"),
    introspection: z
      .strictObject({
        url: httpUrl.describe("the RFC 7662 introspection endpoint"),
        client_id: secretString.describe("client id Tollgate authenticates to the endpoint with"),
        client_secret: secretString.describe("its secret"),
        send_secret_in_body: z.boolean().default(false).describe("client_secret_post instead of client_secret_basic"),
      })
      .optional()
      .describe("ask the identity provider about every token (RFC 7662); opaque tokens and revocation"),
    issuer: z.string().min(1).optional().describe("required `iss` of JWTs"),
    audience: z
      .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
      .default("llama-stack")
      .describe("required `aud` of JWTs (one of these)"),
    claims_mapping: claimsMapping(DEFAULT_OAUTH2_CLAIMS_MAPPING),
    algorithms: z
      .array(z.enum([...ASYMMETRIC_JWS_ALGORITHMS, ...HMAC_JWS_ALGORITHMS]))
      .min(1)
      .default([...ASYMMETRIC_JWS_ALGORITHMS])
      .describe("JWS algorithms accepted; the token's own `alg` header is never trusted alone; HS256/384/512 only pinned alone (then `oct` keys are used)"),
    leeway: z.number().min(0).default(0).describe("seconds of clock skew allowed on exp/nbf"),
    typ: z.string().min(1).optional().describe("required JWT `typ` header, e.g. at+jwt (RFC 9068)"),
    timeout_ms: outboundTimeout,
    cache_ttl_ms: z
      .number()
      .int()
      .min(0)
      .optional()
      .describe("reuse a verified (or introspected) token this long, never beyond its exp; 0: off. Default 30000 with jwks, 0 with introspection (a revoked token is refused at once)"),
    ...tlsClient,
  })
  .superRefine((config, ctx) => {
    const hmac = config.algorithms.filter(isHmacAlgorithm);
    if (hmac.length > 0 && hmac.length < config.algorithms.length) {
      // One key type per config: an HMAC secret and a public key must never be candidates for the same token.
      ctx.addIssue({
        code: "custom",
        message: "HMAC algorithms (HS256, HS384, HS512) cannot be mixed with asymmetric ones; pin one kind",
        path: ["algorithms"],
      });
    }
    if (!config.jwks && !config.introspection) {
      ctx.addIssue({ code: "custom", message: "One of jwks or introspection must be configured", path: ["jwks"] });
    } else if (config.jwks && config.introspection) {
      ctx.addIssue({ code: "custom", message: "At present only one of jwks or introspection should be configured", path: ["introspection"] });
    }
  })
  .describe("OAuth2 bearer tokens: JWTs verified against a JWKS, or any token by introspection (RFC 7662)");

export const githubTokenProviderSchema = z
  .strictObject({
    type: z.literal("github_token"),
    github_api_base_url: httpUrl.default("https://api.github.com").describe("GitHub's API, or https://ghe.example.com/api/v3"),
    claims_mapping: claimsMapping({ login: "roles", organizations: "teams" }),
    timeout_ms: outboundTimeout,
    cache_ttl_ms: z.number().int().min(0).default(60_000).describe("reuse a validated token this long, sparing GitHub's rate limit; 0: off"),
    ...tlsClient,
  })
  .describe("GitHub access tokens, validated by GitHub's /user and /user/orgs");

export const kubernetesProviderSchema = z
  .strictObject({
    type: z.literal("kubernetes"),
    api_server_url: httpUrl.default("https://kubernetes.default.svc").describe("the Kubernetes API server"),
    claims_mapping: claimsMapping({ username: "roles", groups: "roles" }),
    timeout_ms: outboundTimeout,
    cache_ttl_ms: z.number().int().min(0).default(10_000).describe("reuse a validated token this long; 0: off"),
    ...tlsClient,
  })
  .describe("Kubernetes tokens, validated by a SelfSubjectReview with the caller's token");

export const providerConfigSchema = z.discriminatedUnion("type", [
  customProviderSchema,
  upstreamHeaderProviderSchema,
  apiKeyProviderSchema,
  oauth2TokenProviderSchema,
  githubTokenProviderSchema,
  kubernetesProviderSchema,
]);

/** Runs a policy compiler as validation, so an invalid rule is refused at load with its position and reason. */
function policyIssues<T>(compile: (value: T) => unknown) {
  return (value: T, ctx: z.RefinementCtx) => {
    try {
      compile(value);
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      for (const issue of err.issues) ctx.addIssue({ code: "custom", message: issue.message, path: issue.path });
    }
  };
}

const resourceRouteSchema = z.strictObject({
  method: z.enum(["GET", "POST", "PUT", "PATCH", "DELETE"]).describe("HTTP method"),
  path: z
    .string()
    .regex(/^\/[^?#]*$/, "expected a path template such as /v1/widgets/{id}")
    .describe("path template; {id} marks the identifier's segment, a trailing /* matches sub-paths"),
  type: z.string().regex(/^[A-Za-z0-9_.-]+$/, "expected a resource type such as widget").describe("resource type, as in type::id"),
  action: z
    .enum([...ACTIONS, "list", "forward"])
    .describe("create (owner recorded), read, update, delete, list (response filtered), or forward (declared, touches no resource)"),
  id: z
    .string()
    .regex(/^(path|response\.[A-Za-z0-9_]+|body\.[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*)$/, "expected path, response.<field> or body.<field>[|<other name>]")
    .optional()
    .describe("where the identifier is: path ({id}), body.<field> (JSON or form field), response.<field> (create); default: response.id for create, else path"),
  optional: z.boolean().optional().describe("with id body.<field>: forward unchecked when the field is absent (default: 400)"),
});

/** The route catalogs Tollgate ships (src/gateway/catalog.ts; docs/routes.md lists each one's routes and source). */
const PRESETS = ["openai", "llama_stack", "vllm", "ollama", "tgi"] as const;

const resourcesSchema = z.strictObject({
  presets: z
    .array(z.enum(PRESETS))
    .default([...PRESETS])
    .describe("built-in route catalogs, in the order they are tried (docs/routes.md lists their routes)"),
  routes: z.array(resourceRouteSchema).default([]).describe("more routes, tried before the presets"),
  unlisted: z
    .enum(["deny", "allow"])
    .default("deny")
    .describe("a route no catalog entry declares: deny (404 route_not_found, never forwarded) or allow (forwarded, no resource check)"),
});

const notYet = (what: string) => `${what} is not supported by this version of Tollgate yet; remove it`;

const authSchema = z
  .strictObject({
    provider_config: providerConfigSchema.optional(),
    provider_type: z.string().optional().describe("older Llama Stack form: the provider type, with `config`"),
    config: z.record(z.string(), z.unknown()).optional().describe("older Llama Stack form: the provider's settings"),
    access_policy: z
      .array(accessRuleSchema)
      .default([])
      .superRefine(policyIssues(compileAccessPolicy))
      .describe("resource rules, first match decides, no match denies; empty: Llama Stack's default policy (docs/policy.md)"),
    route_policy: z
      .array(routeRuleSchema)
      .default([])
      .superRefine(policyIssues(compileRoutePolicy))
      .describe("route rules matched on the canonical path; when set, a path no rule permits is refused (403)"),
    required_scopes: requiredScopesSchema
      .default({})
      .superRefine(policyIssues(compileRequiredScopes))
      .describe("route pattern → scope the user's `scopes` attribute must contain (else 403)"),
  })
  .superRefine((auth, ctx) => {
    if (auth.provider_config && auth.provider_type !== undefined) {
      ctx.addIssue({ code: "custom", message: "use either provider_config or provider_type + config, not both", path: ["provider_type"] });
    } else if (!auth.provider_config && auth.provider_type === undefined) {
      // Llama Stack 0.7 accepts a route_policy alone: no authentication, and
      // its rules without conditions decide for everyone. Anything that needs
      // a user still needs a provider: without one it would silently pass.
      if (auth.route_policy.length === 0) ctx.addIssue({ code: "custom", message: "required", path: ["provider_config"] });
      else if (auth.access_policy.length > 0 || Object.keys(auth.required_scopes).length > 0) {
        ctx.addIssue({ code: "custom", message: "required with access_policy or required_scopes (without a provider there is no user to check)", path: ["provider_config"] });
      }
    } else if (auth.provider_config && auth.config !== undefined) {
      ctx.addIssue({ code: "custom", message: "`config` belongs to the provider_type form; move it into provider_config", path: ["config"] });
    }
  })
  .transform(({ provider_type, config, ...auth }, ctx) => {
    if (auth.provider_config) return { ...auth, provider_config: auth.provider_config };
    if (provider_type === undefined) return { ...auth, provider_config: undefined };
    // Older Llama Stack form: {provider_type: custom, config: {endpoint: ...}}.
    const legacy = providerConfigSchema.safeParse({ ...(config ?? {}), type: provider_type!.toLowerCase() });
    if (!legacy.success) {
      for (const issue of legacy.error.issues) {
        const inType = issue.path[0] === "type";
        ctx.addIssue({ ...issue, path: inType ? ["provider_type"] : ["config", ...issue.path] } as never);
      }
      return z.NEVER;
    }
    return { ...auth, provider_config: legacy.data };
  });

/** A Redis node of a cluster or sentinel group: `redis://host:port`, `rediss://` for TLS; its password goes in `password`. */
const redisNode = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return (u.protocol === "redis:" || u.protocol === "rediss:") && u.hostname !== "" && !u.username && !u.password && (u.pathname === "" || u.pathname === "/") && !u.search;
  } catch {
    return false;
  }
}, "expected redis://host:port or rediss://host:port (no password or database in it: the password goes in password)");
const redisNodes = z
  .array(redisNode)
  .min(1)
  .refine((nodes) => new Set(nodes.map((n) => n.slice(0, n.indexOf(":")))).size === 1, "all nodes redis:// or all rediss://");

const redisClusterSchema = z
  .strictObject({
    nodes: redisNodes.describe("some of the cluster's nodes (the others are discovered): [redis://10.0.0.1:6379, ...]"),
  })
  .describe("a Redis Cluster; each client's counters share one hash slot");

const redisSentinelSchema = z
  .strictObject({
    name: z.string().min(1).describe("the master group's name in the sentinels' config (sentinel monitor <name> ...)"),
    nodes: redisNodes.describe("the sentinels: [redis://10.0.0.1:26379, ...]"),
    password: secretString.optional().describe("the sentinels' own password (requirepass of sentinel.conf), when they have one"),
    wait_for_replicas: z
      .number()
      .int()
      .min(0)
      .default(1)
      .describe("an admitted request waits until this many replicas have its count (WAIT), so a failover cannot lose it; 0: not waited for"),
  })
  .describe("Redis behind Sentinel: the current master is asked of the sentinels, again after a failover");

const quotaPeriod = z.enum(PERIODS).describe("second, minute, hour, day or month (UTC calendar month)");
const quotaNamespace = z.string().optional().describe("prefix of every quota key (Llama Stack's namespace)");

/**
 * `server.quota.kvstore`: Llama Stack's `{type: sqlite, db_path}` and
 * `{type: redis, host, port, namespace}` unchanged, plus a Redis URL
 * (`rediss://` for TLS, password in it or in `password`).
 */
const quotaKvstoreSchema = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("sqlite"),
    db_path: z.string().min(1).default("./data/quota.db").describe("SQLite file shared by the gateway processes of one machine"),
    namespace: quotaNamespace,
  }),
  z
    .strictObject({
      type: z.literal("redis"),
      url: z.string().regex(/^rediss?:\/\//, "expected a redis:// or rediss:// URL").optional().describe("redis://[:password@]host:port/db; rediss:// for TLS"),
      host: z.string().min(1).optional().describe("Llama Stack's form: Redis host (default localhost)"),
      port: z.number().int().min(1).max(65535).optional().describe("Llama Stack's form: Redis port (default 6379)"),
      password: secretString.optional().describe("Redis password (AUTH), instead of putting it in the URL; with cluster or sentinel, every node's"),
      namespace: quotaNamespace,
      command_timeout_ms: positiveMs.default(1000).describe("a Redis command slower than this counts as a store failure"),
      cluster: redisClusterSchema.optional(),
      sentinel: redisSentinelSchema.optional(),
    })
    .superRefine((r, ctx) => {
      // One way to reach Redis: a URL, host/port, a cluster or a sentinel group.
      const forms = (["url", "host", "port", "cluster", "sentinel"] as const).filter((k) => r[k] !== undefined);
      const [first, second] = forms.filter((k) => k !== "port" || !forms.includes("host"));
      if (second !== undefined) ctx.addIssue({ code: "custom", message: `use one of url, host/port, cluster or sentinel, not ${first} and ${second}`, path: [second] });
      // A brace in the prefix would move the hash tag off the client: one check's keys on several slots (CROSSSLOT).
      if (r.cluster && /[{}]/.test(r.namespace ?? "")) ctx.addIssue({ code: "custom", message: "no { or } in a cluster's namespace (the client's hash tag follows it)", path: ["namespace"] });
    }),
  // Llama Stack 0.7: {backend: kv_default, namespace: quota}, resolved against the top-level storage.backends.
  kvstoreReferenceSchema,
]);

const quotaSchema = z
  .strictObject({
    kvstore: quotaKvstoreSchema.default({ type: "sqlite", db_path: "./data/quota.db" }).describe("where counters live; sqlite (default) or redis, or Llama Stack's {backend, namespace}"),
    anonymous_max_requests: z.number().int().min(0).default(100).describe("requests per `period` for unauthenticated clients (Llama Stack)"),
    authenticated_max_requests: z.number().int().min(0).default(1000).describe("requests per `period` for each authenticated principal (Llama Stack)"),
    period: quotaPeriod.default("day"),
    limits: z.array(quotaLimitSchema).default([]).describe("more limits for authenticated clients, all enforced"),
    tiers: z
      .array(
        z.strictObject({
          name: z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, "expected a name of letters, digits, _ . -"),
          when: z
            .union([z.string(), z.array(z.string()).min(1)])
            .superRefine((when, ctx) => {
              (typeof when === "string" ? [when] : when).forEach((text, i) => {
                const parsed = parseCondition(text);
                const problem =
                  typeof parsed === "string"
                    ? parsed
                    : parsed.kind === "user_with_value_in" || parsed.kind === "user_with_value_not_in"
                      ? undefined
                      : "a tier condition is about the user only: user with <value> in <attr>, user with <value> not in <attr>";
                if (problem) ctx.addIssue({ code: "custom", message: problem, path: typeof when === "string" ? [] : [i] });
              });
            })
            .describe("condition(s) on the user, all must hold: user with premium in roles"),
          limits: z.array(quotaLimitSchema).describe("replace `limits` for users of this tier"),
        }),
      )
      .default([])
      .describe("the first tier whose `when` holds replaces `limits`"),
    failure_mode: z.enum(["closed", "open"]).default("closed").describe("store down: closed answers 503, open lets requests through (logged, counted)"),
    trusted_proxies: z.array(addressOrCidr).default([]).describe("peers whose X-Forwarded-For / Forwarded is believed for anonymous clients"),
  })
  .optional()
  .describe("request and LLM-token quotas (docs/quotas.md); absent: none");

/**
 * Default bound on request bytes buffered across requests in flight: four
 * bodies of 64 MiB, or thousands of ordinary chat requests (a few KiB each),
 * while keeping a gateway under ~1 GiB resident with a body copy each.
 */
const DEFAULT_MAX_BUFFERED_BYTES = 256 * MiB;

/** `server.workers` / `--workers`: a count from 1, or `auto` (one per available core). */
export const workersSchema = z.union([z.number().int().min(1).max(1024), z.literal("auto")]);

/** The admin condition's default: the first admin key has `{roles: [admin]}`. */
export const DEFAULT_ADMIN_WHEN = "user with admin in roles";

/** `server.admin`: the admin API (`/admin/v1/...`) and the console (`/console/`), docs/admin.md. */
const adminSchema = z.strictObject({
  enabled: z.boolean().default(true).describe("serve the admin API and the console (false: both 404, never forwarded)"),
  when: z
    .union([z.string(), z.array(z.string()).min(1)])
    .default(DEFAULT_ADMIN_WHEN)
    .superRefine((when, ctx) => {
      // Parsed like a rule's `when`: an unreadable admin condition must never quietly admit or refuse everyone.
      for (const [i, text] of (Array.isArray(when) ? when : [when]).entries()) {
        const parsed = parseCondition(text);
        if (typeof parsed === "string") ctx.addIssue({ code: "custom", message: parsed, path: Array.isArray(when) ? [i] : [] });
        else if (parsed.kind !== "user_with_value_in" && parsed.kind !== "user_with_value_not_in") {
          ctx.addIssue({ code: "custom", message: "only `user with <value> in <attr>` and `user with <value> not in <attr>` apply here (there is no resource owner)", path: Array.isArray(when) ? [i] : [] });
        }
      }
    })
    .describe("conditions (all must hold) that make an authenticated user an admin"),
});

const serverSchema = z.strictObject({
  host: z
    .string()
    .min(1)
    .nullable()
    .default("127.0.0.1")
    .transform((h) => h ?? "127.0.0.1")
    .describe("address to listen on (null, as Llama Stack writes it: the default)"),
  port: z.number().int().min(0).max(65535).default(8321).describe("port to listen on (0: any free port)"),
  workers: workersSchema.default(1).describe("worker processes sharing the port (auto: one per available core); `--workers` wins"),
  public_paths: z
    .array(z.string().transform((p, ctx) => {
      try {
        return canonicalPath(p);
      } catch {
        ctx.addIssue({ code: "custom", message: "expected an absolute path such as /health" });
        return z.NEVER;
      }
    }))
    .default([...DEFAULT_PUBLIC_PATHS])
    .describe("exact canonical paths that skip authentication"),
  tls: z
    .strictObject({ cert_file: z.string().min(1), key_file: z.string().min(1) })
    .optional()
    .describe("serve HTTPS with this certificate and key (PEM files)"),
  tls_certfile: z.string().min(1).optional().describe("Llama Stack's name for tls.cert_file"),
  tls_keyfile: z.string().min(1).optional().describe("Llama Stack's name for tls.key_file"),
  tls_cafile: z.string().min(1).optional().describe("Llama Stack's client-certificate CA; not supported yet")
    .refine((v) => v === undefined, notYet("tls_cafile (client certificates)")),
  cors: z.unknown().optional().describe("Llama Stack's CORS settings; accepted and ignored (Tollgate adds no CORS headers)"),
  auth: authSchema.optional().describe("authentication and access control; absent: no authentication"),
  quota: quotaSchema,
  resources: resourcesSchema
    .default({ presets: [...PRESETS], routes: [], unlisted: "deny" })
    .describe("the resource catalog: which routes read, create, update, delete or list which resources"),
  max_body_bytes: z.number().int().positive().default(100 * MiB).describe("largest request body accepted (413 beyond)"),
  body_idle_timeout_ms: positiveMs.default(60_000).describe("a request body with no byte for this long: 408, the upstream request aborted"),
  max_buffered_bytes: z
    .number()
    .int()
    .positive()
    .optional()
    .describe("request bytes held in memory (bodies read for their model or usage), across every request in flight; beyond: 503 overloaded (default 256 MiB, or max_body_bytes when larger)"),
  max_header_count: z.number().int().min(1).max(1000).default(100).describe("most header fields in a request (431 beyond)"),
  shutdown_timeout_ms: positiveMs.default(30_000).describe("on SIGTERM, wait this long for in-flight requests"),
  admin: adminSchema.default({ enabled: true, when: DEFAULT_ADMIN_WHEN }).describe("the admin API and web console (docs/admin.md, docs/console.md)"),
}).superRefine((server, ctx) => {
  if ((server.tls_certfile === undefined) !== (server.tls_keyfile === undefined)) {
    ctx.addIssue({ code: "custom", message: "tls_certfile and tls_keyfile go together", path: ["tls_certfile"] });
  }
  if (server.tls && server.tls_certfile) {
    ctx.addIssue({ code: "custom", message: "use either tls or tls_certfile/tls_keyfile, not both", path: ["tls"] });
  }
  if (server.max_buffered_bytes !== undefined && server.max_buffered_bytes < server.max_body_bytes) {
    ctx.addIssue({ code: "custom", message: "must be at least max_body_bytes (else a body of the largest size could never be read)", path: ["max_buffered_bytes"] });
  }
}).transform(({ tls_certfile, tls_keyfile, tls_cafile: _ca, cors: _cors, ...server }) => ({
  ...server,
  max_buffered_bytes: server.max_buffered_bytes ?? Math.max(DEFAULT_MAX_BUFFERED_BYTES, server.max_body_bytes),
  tls: server.tls ?? (tls_certfile && tls_keyfile ? { cert_file: tls_certfile, key_file: tls_keyfile } : undefined),
}));

/** What one upstream is reached with: the keys `upstream:` and each entry of `upstreams:` share. */
const upstreamSettings = {
  url: httpUrl
    .refine(
      (s) => !URL.canParse(s) || !/\/v1\/?$/i.test(new URL(s).pathname),
      "must not end in /v1: clients already send /v1/... paths, which the gateway forwards under this URL (give the server's root, e.g. http://127.0.0.1:8000)",
    )
    .describe("base URL of the server to forward to (the client's path is appended; not ending in /v1)"),
  api_key: secretString.optional().describe("sent upstream as `Authorization: Bearer` instead of the client's credential"),
  principal_header: headerName.optional().describe("header that carries the authenticated principal upstream (unset: not sent)"),
  connect_timeout_ms: positiveMs.default(10_000).describe("connecting to the upstream (then 502)"),
  response_timeout_ms: positiveMs.default(600_000).describe("waiting for the upstream's response headers (then 504)"),
  idle_timeout_ms: positiveMs.default(600_000).describe("silence in the middle of a response body before it is cut"),
  verify_tls: z.boolean().default(true).describe("verify an https:// upstream's TLS certificate"),
  tls_cafile: z.string().min(1).optional().describe("PEM file of CA certificates to trust for an https:// upstream"),
};

const upstreamSchema = z.strictObject({
  ...upstreamSettings,
  url: upstreamSettings.url.default(DEFAULT_UPSTREAM),
});

/** The name a single `upstream:` goes by (usage rows, metrics, resources' owners). */
export const DEFAULT_UPSTREAM_NAME = "default";

/** A model pattern of `upstreams[].models`: a name, a glob (`llama-guard-*`), or `*` (every model no other upstream names). */
const modelPattern = z.string().min(1, "expected a model name or glob such as llama-3.1-70b, llama-guard-* or *");

const namedUpstreamSchema = z.strictObject({
  name: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, "expected a name of letters, digits, '.', '_' or '-' (at most 63)")
    .describe("the upstream's name, in usage rows, metrics and /ready (unique)"),
  ...upstreamSettings,
  models: z.array(modelPattern).min(1).describe('models it serves: names, globs (`llama-guard-*`), or "*" for every model no other upstream names'),
});

const upstreamsSchema = z
  .array(namedUpstreamSchema)
  .min(1)
  .superRefine((list, ctx) => {
    const seen = new Set<string>();
    list.forEach((upstream, i) => {
      if (seen.has(upstream.name)) ctx.addIssue({ code: "custom", message: `duplicate name ${JSON.stringify(upstream.name)}: names must be unique`, path: [i, "name"] });
      seen.add(upstream.name);
    });
  })
  .describe("several model servers, routed by the request's model (docs/upstreams.md); instead of `upstream`");

const modelAliasesSchema = z
  .record(z.string().min(1), z.string().min(1))
  .superRefine((aliases, ctx) => {
    for (const [alias, target] of Object.entries(aliases)) {
      if (aliases[target] !== undefined) ctx.addIssue({ code: "custom", message: `the target ${JSON.stringify(target)} is itself an alias: aliases are not chained`, path: [alias] });
    }
  })
  .default({})
  .describe("the client's model name -> the served name, applied before policy (docs/upstreams.md)");

const storageSchema = z.discriminatedUnion("type", [
  // Llama Stack 0.7's {backends: {...}, stores: {...}}: resolved to one of the two below (llama-stack.ts).
  llamaStorageSchema,
  z.strictObject({
    type: z.literal("sqlite"),
    db_path: z.string().min(1).default("./data/tollgate.db").describe("SQLite file (created with its folder)"),
  }),
  z.strictObject({
    type: z.literal("postgres"),
    url: z.string().regex(/^postgres(ql)?:\/\//, "expected a postgres:// URL").describe("PostgreSQL connection URL"),
  }),
]);

const metricsSchema = z.strictObject({
  enabled: z.boolean().default(true).describe("serve Prometheus metrics at GET /metrics"),
  port: z.number().int().min(1).max(65535).optional().describe("serve /metrics on this port instead of the main one"),
  host: z.string().min(1).optional().describe("address for metrics.port (default: server.host)"),
  path: z.string().regex(/^\/[A-Za-z0-9._~\/-]*$/, "expected an absolute path such as /metrics").default("/metrics").describe("where the metrics are served"),
});

const price = z.number().min(0).finite();
const pricingSchema = z
  .strictObject({
    currency: z.string().regex(/^[A-Z]{3}$/, "expected an ISO 4217 code such as USD").default("USD").describe("what costs and spend budgets are counted in"),
    models: z
      .record(
        z.string().min(1),
        z.strictObject({
          input: price.describe("per million prompt (input) tokens"),
          output: price.describe("per million completion (output) tokens"),
        }),
      )
      .default({})
      .describe('model name (as forwarded) -> price per million tokens; "*" prices every other model (none: they cost 0)'),
  })
  .describe("prices of models, for usage cost and spend budgets (docs/usage.md)");

const usageSchema = z
  .strictObject({
    enabled: z.boolean().default(true).describe("count every forwarded request (tokens, cost) in the record store; false: nothing is recorded"),
  })
  .describe("usage recording (docs/usage.md)");

const tracingSchema = z
  .strictObject({
    otlp_endpoint: httpUrl.describe("the OTLP/HTTP collector's base URL; spans are POSTed to {otlp_endpoint}/v1/traces (e.g. http://collector:4318)"),
    service_name: z.string().min(1).default("tollgate").describe("service.name of every span"),
    sample_ratio: z.number().min(0).max(1).default(1).describe("share of new traces recorded (0..1); a client's traceparent keeps its own sampled flag"),
  })
  .describe("OpenTelemetry traces over OTLP/HTTP (docs/tracing.md); absent: no tracing");

const loggingSchema = z.strictObject({
  level: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
});

export const configSchema = z
  .strictObject({
    server: serverSchema.default(serverSchema.parse({})),
    upstream: upstreamSchema.optional().describe("the one server to forward to (default http://127.0.0.1:11434); or `upstreams`"),
    upstreams: upstreamsSchema.optional(),
    model_aliases: modelAliasesSchema,
    storage: storageSchema.default({ type: "sqlite", db_path: "./data/tollgate.db" }),
    metrics: metricsSchema.default(metricsSchema.parse({})).describe("Prometheus metrics (docs/operations.md)"),
    pricing: pricingSchema.default({ currency: "USD", models: {} }),
    usage: usageSchema.default({ enabled: true }),
    logging: loggingSchema.default({ level: "info" }),
    tracing: tracingSchema.optional(),
  })
  .superRefine((config, ctx) => {
    if (config.upstream !== undefined && config.upstreams !== undefined) {
      ctx.addIssue({ code: "custom", message: "use either upstream (one server) or upstreams (several), not both", path: ["upstreams"] });
    }
  })
  .transform(({ storage, ...config }, ctx) => {
    // Llama Stack's named backends become Tollgate's stores (llama-stack.ts).
    const record = "backends" in storage ? resolveRecordStore(storage) : storage;
    const quota = config.server.quota;
    const kvstore =
      quota === undefined ? undefined : "backend" in quota.kvstore ? resolveQuotaStore(quota.kvstore, "backends" in storage ? storage.backends : undefined) : quota.kvstore;
    const issues = [...(Array.isArray(record) ? record : []), ...(kvstore !== undefined && "message" in kvstore ? [kvstore] : [])];
    for (const issue of issues) ctx.addIssue({ code: "custom", message: issue.message, path: [...issue.path] });
    if (Array.isArray(record) || (kvstore !== undefined && "message" in kvstore)) return z.NEVER;
    // Neither form: the one default upstream (Ollama's address).
    const upstream = config.upstream ?? (config.upstreams === undefined ? upstreamSchema.parse({}) : undefined);
    return { ...config, upstream, storage: record, server: { ...config.server, quota: quota && kvstore && { ...quota, kvstore } } };
  });

/** A validated configuration, defaults filled in. */
export type Config = z.output<typeof configSchema>;
/** What a config file may contain. */
export type ConfigInput = z.input<typeof configSchema>;
export type ProviderConfig = z.output<typeof providerConfigSchema>;
export type StorageConfig = Config["storage"];
export type QuotaConfig = NonNullable<Config["server"]["quota"]>;
export type PricingConfig = Config["pricing"];
/** One upstream's settings, named: an entry of `upstreams`, or the single `upstream` as {@link DEFAULT_UPSTREAM_NAME} serving every model. */
export type UpstreamConfig = z.output<typeof namedUpstreamSchema>;

/**
 * The upstreams a config forwards to, in order: `upstreams`, or the single
 * `upstream` as one named {@link DEFAULT_UPSTREAM_NAME} serving every model.
 */
export function upstreamsOf(config: Pick<Config, "upstream" | "upstreams">): readonly UpstreamConfig[] {
  if (config.upstreams !== undefined) return config.upstreams;
  return [{ name: DEFAULT_UPSTREAM_NAME, models: ["*"], ...(config.upstream ?? upstreamSchema.parse({})) }];
}
export type TracingConfig = NonNullable<Config["tracing"]>;
