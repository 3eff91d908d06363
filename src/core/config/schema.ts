import { isIP } from "node:net";
import { z } from "zod";
import { canonicalPath } from "../path.js";

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
 * A secret given as `${env.NAME}` whose value happens to look like a number
 * (`12345`) is typed as a number by env substitution; a secret is always text.
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
      .describe("when set, only peers in these addresses/CIDRs may assert identity; others get 401"),
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

export const providerConfigSchema = z.discriminatedUnion("type", [
  customProviderSchema,
  upstreamHeaderProviderSchema,
  apiKeyProviderSchema,
]);

const notYet = (what: string) => `${what} is not supported by this version of Tollgate yet; remove it`;

const authSchema = z
  .strictObject({
    provider_config: providerConfigSchema.optional(),
    provider_type: z.string().optional().describe("older Llama Stack form: the provider type, with `config`"),
    config: z.record(z.string(), z.unknown()).optional().describe("older Llama Stack form: the provider's settings"),
    access_policy: z.array(z.unknown()).max(0, notYet("access_policy")).default([]),
    route_policy: z.array(z.unknown()).max(0, notYet("route_policy")).default([]),
    required_scopes: z
      .record(z.string(), z.string())
      .refine((r) => Object.keys(r).length === 0, notYet("required_scopes"))
      .default({}),
  })
  .superRefine((auth, ctx) => {
    if (auth.provider_config && auth.provider_type !== undefined) {
      ctx.addIssue({ code: "custom", message: "use either provider_config or provider_type + config, not both", path: ["provider_type"] });
    } else if (!auth.provider_config && auth.provider_type === undefined) {
      ctx.addIssue({ code: "custom", message: "required", path: ["provider_config"] });
    } else if (auth.provider_config && auth.config !== undefined) {
      ctx.addIssue({ code: "custom", message: "`config` belongs to the provider_type form; move it into provider_config", path: ["config"] });
    }
  })
  .transform(({ provider_type, config, ...auth }, ctx) => {
    if (auth.provider_config) return { ...auth, provider_config: auth.provider_config };
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

const quotaSchema = z.unknown().refine((q) => q === undefined, notYet("quota")).optional();

const serverSchema = z.strictObject({
  host: z.string().min(1).default("127.0.0.1").describe("address to listen on"),
  port: z.number().int().min(0).max(65535).default(8321).describe("port to listen on (0: any free port)"),
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
  max_body_bytes: z.number().int().positive().default(100 * MiB).describe("largest request body accepted (413 beyond)"),
  shutdown_timeout_ms: positiveMs.default(30_000).describe("on SIGTERM, wait this long for in-flight requests"),
}).superRefine((server, ctx) => {
  if ((server.tls_certfile === undefined) !== (server.tls_keyfile === undefined)) {
    ctx.addIssue({ code: "custom", message: "tls_certfile and tls_keyfile go together", path: ["tls_certfile"] });
  }
  if (server.tls && server.tls_certfile) {
    ctx.addIssue({ code: "custom", message: "use either tls or tls_certfile/tls_keyfile, not both", path: ["tls"] });
  }
}).transform(({ tls_certfile, tls_keyfile, tls_cafile: _ca, cors: _cors, ...server }) => ({
  ...server,
  tls: server.tls ?? (tls_certfile && tls_keyfile ? { cert_file: tls_certfile, key_file: tls_keyfile } : undefined),
}));

const upstreamSchema = z.strictObject({
  url: httpUrl.default(DEFAULT_UPSTREAM).describe("base URL of the OpenAI-compatible server to forward to"),
  api_key: secretString.optional().describe("sent upstream as `Authorization: Bearer` instead of the client's credential"),
  principal_header: headerName.optional().describe("header that carries the authenticated principal upstream (unset: not sent)"),
  connect_timeout_ms: positiveMs.default(10_000).describe("connecting to the upstream (then 502)"),
  response_timeout_ms: positiveMs.default(600_000).describe("waiting for the upstream's response headers (then 504)"),
  idle_timeout_ms: positiveMs.default(600_000).describe("silence in the middle of a response body before it is cut"),
});

const storageSchema = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("sqlite"),
    db_path: z.string().min(1).default("./data/tollgate.db").describe("SQLite file (created with its folder)"),
  }),
  z.strictObject({
    type: z.literal("postgres"),
    url: z.string().regex(/^postgres(ql)?:\/\//, "expected a postgres:// URL").describe("PostgreSQL connection URL"),
  }),
]);

const loggingSchema = z.strictObject({
  level: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
});

export const configSchema = z.strictObject({
  server: serverSchema.default(serverSchema.parse({})),
  upstream: upstreamSchema.default(upstreamSchema.parse({})),
  storage: storageSchema.default({ type: "sqlite", db_path: "./data/tollgate.db" }),
  logging: loggingSchema.default({ level: "info" }),
});

/** A validated configuration, defaults filled in. */
export type Config = z.output<typeof configSchema>;
/** What a config file may contain. */
export type ConfigInput = z.input<typeof configSchema>;
export type ProviderConfig = z.output<typeof providerConfigSchema>;
export type StorageConfig = Config["storage"];
