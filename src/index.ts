/**
 * Tollgate as a library: `import { ... } from "tollgate"`.
 *
 * The same pipeline the gateway runs — canonical path, public routes,
 * authentication — for your own Node server. Start with
 * {@link createTollgate} (plain `node:http`); other frameworks build on
 * {@link createPipeline} and {@link toErrorResponse}. See docs/library.md.
 */

import type { StorageConfig } from "./core/config/schema.js";
import type { RecordStore } from "./core/stores/types.js";

/** The `node:http` adapter: `createTollgate`, `toPipelineRequest`, `sendError`. */
export { createTollgate, sendError, toPipelineRequest } from "./adapters/node.js";
export type { Tollgate, TollgateOptions } from "./adapters/node.js";

/** The framework-free pipeline, for writing an adapter of your own. */
export { authorizationHeaders, createPipeline } from "./core/pipeline.js";
export type { Pipeline, PipelineOptions, PipelineRequest, RequestContext } from "./core/pipeline.js";

/** Canonical request paths, as every stage sees them. */
export { canonicalPath, canonicalTarget } from "./core/path.js";
export type { CanonicalTarget } from "./core/path.js";

/** `Authorization: Bearer` parsing (RFC 6750), strict: one header, one token. */
export { MAX_CREDENTIAL_BYTES, parseBearer } from "./core/bearer.js";

/**
 * Every refusal Tollgate makes (each class a library user can catch, and
 * `ERRORS`, the table of their codes, statuses and types), and the one
 * function that turns one into an OpenAI-style error response.
 */
export {
  AUTH_REALM,
  AuthError,
  BadRequestError,
  BudgetExceededError,
  ConfigError,
  ERRORS,
  ForbiddenError,
  HeadersTooLargeError,
  IdentityUnavailableError,
  InvalidParameterError,
  JsonTooDeepError,
  MethodNotAllowedError,
  NotFoundError,
  OverloadedError,
  PayloadTooLargeError,
  QuotaExceededError,
  QuotaUnavailableError,
  RequestTimeoutError,
  RouteNotFoundError,
  ShuttingDownError,
  StoreUnavailableError,
  TollgateError,
  toErrorResponse,
  UnsupportedMediaTypeError,
  UpstreamError,
  UpstreamTimeoutError,
} from "./core/errors.js";
export type { ErrorCode, ErrorEnvelope, ErrorResponse } from "./core/errors.js";

/** Who is calling: what every authentication provider produces. */
export { makeUser } from "./core/user.js";
export type { User } from "./core/user.js";

/** The configuration (`tollgate.yaml`): loading, validation, defaults and its JSON Schema. */
export { configJsonSchema, defaultConfig, loadConfig, parseConfig, validateConfig } from "./core/config/load.js";
export { DEFAULT_PUBLIC_PATHS, DEFAULT_UPSTREAM } from "./core/config/schema.js";
export type { Config, ConfigInput, ProviderConfig, StorageConfig } from "./core/config/schema.js";

/** Authentication providers: the factory the config drives, and the contract a provider implements. */
export { createProvider } from "./core/providers/index.js";
export type { ProviderDeps } from "./core/providers/index.js";
export { createCustomProvider } from "./core/providers/custom.js";
export type { CustomProviderConfig, CustomProviderDeps } from "./core/providers/custom.js";
export { createUpstreamHeaderProvider } from "./core/providers/upstream-header.js";
export type { UpstreamHeaderProviderConfig } from "./core/providers/upstream-header.js";
export { createOAuth2Provider } from "./core/providers/oauth2.js";
export { createGitHubProvider } from "./core/providers/github.js";
export { createKubernetesProvider } from "./core/providers/kubernetes.js";
export { createApiKeyProvider } from "./core/providers/api-key.js";
export type { AuthProvider, AuthRequest } from "./core/providers/types.js";

// Access policy (stages 4 and 6): compile once, evaluate per request.
export { compileAccessPolicy, compileRoutePolicy, compileRequiredScopes, DEFAULT_POLICY } from "./core/policy/compile.js";
export type { Action, CompiledAccessPolicy, Decision } from "./core/policy/compile.js";
export { evaluateAccess, resourceKey } from "./core/policy/evaluate.js";
export type { Resource } from "./core/policy/evaluate.js";
export { explainDecision } from "./core/policy/explain.js";

// Quotas (stage 5).
export { createQuota } from "./core/quota/quota.js";
export type { Quota } from "./core/quota/quota.js";

/** The record store the `api_key` provider reads keys from. */
export type { ApiKeyPage, ApiKeyPageQuery, ApiKeyRecord, KeyLimit, RecordStore, UsageDelta, UsageGroup, UsageQuery, UsageRow } from "./core/stores/types.js";

/**
 * Opens the record store `storage` describes (`sqlite` or `postgres`),
 * creating its tables if needed; the caller closes it. Loaded on first use,
 * so that importing Tollgate never loads a database driver.
 *
 * @example const store = await openRecordStore(config.storage);
 */
export async function openRecordStore(config: StorageConfig): Promise<RecordStore> {
  const stores = await import("./core/stores/index.js");
  return stores.openRecordStore(config);
}

/** The logger Tollgate writes with (pino, credentials redacted). */
export { createLogger } from "./core/log.js";
export type { Logger } from "./core/log.js";

/** Tollgate's version, from its package.json. */
export { VERSION } from "./version.js";
