/**
 * Every error Tollgate can refuse a request with, in one place: the table
 * {@link ERRORS} lists each class with its status, type and codes.
 *
 * Each class carries a stable `code` (callers branch on it, never on the
 * message), the HTTP `status`, the OpenAI error `type`, and a `message` that
 * is safe to show to the caller: no token, secret or upstream detail ever goes
 * into one. The gateway and every adapter turn these into the OpenAI error
 * envelope with {@link toErrorResponse}, in one function.
 */

/** The OpenAI error envelope, so that OpenAI SDK clients surface our errors. */
export interface ErrorEnvelope {
  error: { message: string; type: string; code: string; param: string | null };
}

export interface ErrorResponse {
  status: number;
  headers: Record<string, string>;
  body: ErrorEnvelope;
}

/**
 * Every refusal, in one table: the class that raises it, its HTTP status,
 * its OpenAI error `type`, and every `code` it can carry (fastify's
 * lib/errors.js and jose's static `code` are the models). Each class below
 * takes its status and type from its row and accepts only the codes listed
 * there: a new code is added here or does not compile. `internal_error` is
 * what {@link toErrorResponse} answers for anything that is not a
 * {@link TollgateError}.
 */
export const ERRORS = {
  BadRequestError: { status: 400, type: "invalid_request_error", codes: ["invalid_request", "invalid_path", "invalid_body", "duplicate_host", "malformed_request", "invalid_json"] },
  InvalidParameterError: { status: 400, type: "invalid_request_error", codes: ["invalid_parameter"] },
  JsonTooDeepError: { status: 400, type: "invalid_request_error", codes: ["json_too_deep"] },
  AuthError: { status: 401, type: "authentication_error", codes: ["missing_credential", "invalid_token", "invalid_request"] },
  ForbiddenError: { status: 403, type: "permission_error", codes: ["access_denied", "route_denied", "missing_scope", "admin_required", "admin_unavailable"] },
  NotFoundError: { status: 404, type: "not_found_error", codes: ["not_found", "model_not_found", "key_not_found"] },
  RouteNotFoundError: { status: 404, type: "not_found_error", codes: ["route_not_found"] },
  MethodNotAllowedError: { status: 405, type: "invalid_request_error", codes: ["method_not_allowed"] },
  RequestTimeoutError: { status: 408, type: "invalid_request_error", codes: ["request_timeout"] },
  PayloadTooLargeError: { status: 413, type: "invalid_request_error", codes: ["request_too_large"] },
  UnsupportedMediaTypeError: { status: 415, type: "invalid_request_error", codes: ["unsupported_media_type"] },
  QuotaExceededError: { status: 429, type: "rate_limit_error", codes: ["rate_limit_exceeded"] },
  BudgetExceededError: { status: 429, type: "rate_limit_error", codes: ["budget_exceeded"] },
  HeadersTooLargeError: { status: 431, type: "invalid_request_error", codes: ["headers_too_large"] },
  InternalError: { status: 500, type: "server_error", codes: ["internal_error"] },
  UpstreamError: { status: 502, type: "upstream_error", codes: ["bad_gateway"] },
  IdentityUnavailableError: { status: 503, type: "service_unavailable", codes: ["identity_provider_unavailable"] },
  QuotaUnavailableError: { status: 503, type: "service_unavailable", codes: ["quota_store_unavailable"] },
  StoreUnavailableError: { status: 503, type: "service_unavailable", codes: ["store_unavailable"] },
  OverloadedError: { status: 503, type: "service_unavailable", codes: ["overloaded"] },
  ShuttingDownError: { status: 503, type: "service_unavailable", codes: ["shutting_down"] },
  UpstreamTimeoutError: { status: 504, type: "upstream_error", codes: ["gateway_timeout"] },
} as const satisfies Record<string, { status: number; type: string; codes: readonly string[] }>;

/** The codes a class of {@link ERRORS} may carry. */
export type ErrorCode<K extends keyof typeof ERRORS> = (typeof ERRORS)[K]["codes"][number];

/** Base class: a refusal with a status, a stable code and a safe message. */
export class TollgateError extends Error {
  readonly status: number;
  readonly code: string;
  readonly type: string;
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    status: number,
    type: string,
    code: string,
    message: string,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.code = code;
    this.headers = headers;
  }
}

/** The status, type and code of a refusal of class `name`, as {@link TollgateError} takes them. */
function refusal<K extends keyof typeof ERRORS>(name: K, code: ErrorCode<K>): [status: number, type: string, code: string] {
  return [ERRORS[name].status, ERRORS[name].type, code];
}

/** Realm sent in every `WWW-Authenticate` challenge (RFC 6750 §3). */
export const AUTH_REALM = "tollgate";

/**
 * 401: the credential is missing or was refused.
 *
 * `code` is `missing_credential` when nothing was sent (RFC 6750 §3.1: then
 * the challenge carries no error attribute) and `invalid_token` otherwise.
 */
export class AuthError extends TollgateError {
  /** What exactly was wrong, when the message is kept short on purpose (the challenge's `error_description`, and the log). */
  readonly detail: string | undefined;

  constructor(code: ErrorCode<"AuthError">, message: string, detail?: string) {
    // RFC 6750 §3: error_description is a quoted-string without `"` or `\`.
    const description = detail === undefined ? "" : `, error_description="${detail.replace(/["\\]/g, "'")}"`;
    const challenge =
      code === "missing_credential"
        ? `Bearer realm="${AUTH_REALM}"`
        : `Bearer realm="${AUTH_REALM}", error="${code}"${description}`;
    super(...refusal("AuthError", code), message, { "www-authenticate": challenge });
    this.detail = detail;
  }
}

/** 503: the identity service could not be reached, timed out or failed. */
export class IdentityUnavailableError extends TollgateError {
  constructor(message = "Authentication service unavailable") {
    super(...refusal("IdentityUnavailableError", "identity_provider_unavailable"), message, { "retry-after": "1" });
  }
}

/** 403: authenticated, but not allowed. */
export class ForbiddenError extends TollgateError {
  constructor(message: string, code: ErrorCode<"ForbiddenError"> = "access_denied") {
    super(...refusal("ForbiddenError", code), message);
  }
}

/** 404: the resource does not exist, or the caller may not know it does. */
export class NotFoundError extends TollgateError {
  constructor(message = "Not found", code: ErrorCode<"NotFoundError"> = "not_found") {
    super(...refusal("NotFoundError", code), message);
  }
}

/** 400: a request Tollgate cannot process safely (bad path, bad header). */
export class BadRequestError extends TollgateError {
  constructor(message: string, code: ErrorCode<"BadRequestError"> = "invalid_request") {
    super(...refusal("BadRequestError", code), message);
  }
}

/**
 * 400: a field of a request Tollgate answers itself (the admin API) is
 * missing or wrong; `param` names it, as OpenAI's errors do
 * (`expires_in`, `limits[0].period`).
 */
export class InvalidParameterError extends TollgateError {
  readonly param: string;
  constructor(param: string, message: string) {
    super(...refusal("InvalidParameterError", "invalid_parameter"), message);
    this.param = param;
  }
}

/** 405: a method the gateway does not serve (TRACE, CONNECT, ...). */
export class MethodNotAllowedError extends TollgateError {
  constructor(method: string) {
    super(...refusal("MethodNotAllowedError", "method_not_allowed"), `Method ${method} is not allowed`);
  }
}

/** 408: the client took too long to send its request. */
export class RequestTimeoutError extends TollgateError {
  constructor() {
    super(...refusal("RequestTimeoutError", "request_timeout"), "Request timed out");
  }
}

/** 415: a Content-Type header that cannot be parsed. */
export class UnsupportedMediaTypeError extends TollgateError {
  constructor() {
    super(...refusal("UnsupportedMediaTypeError", "unsupported_media_type"), "Invalid Content-Type header");
  }
}

/** 413: the request body exceeds `server.max_body_bytes`. */
export class PayloadTooLargeError extends TollgateError {
  constructor(limit: number) {
    super(...refusal("PayloadTooLargeError", "request_too_large"), `Request body exceeds the limit of ${limit} bytes`);
  }
}

/** 431: the request's headers exceed the server's limit. */
export class HeadersTooLargeError extends TollgateError {
  constructor() {
    super(...refusal("HeadersTooLargeError", "headers_too_large"), "Request header fields too large");
  }
}

/** 502: the upstream refused the connection, reset it or answered garbage. */
export class UpstreamError extends TollgateError {
  constructor(message = "Upstream server unavailable") {
    super(...refusal("UpstreamError", "bad_gateway"), message);
  }
}

/** 504: the upstream did not answer in time. */
export class UpstreamTimeoutError extends TollgateError {
  constructor(message = "Upstream server timed out") {
    super(...refusal("UpstreamTimeoutError", "gateway_timeout"), message);
  }
}

/** 503: the gateway is shutting down and takes no new requests. */
export class ShuttingDownError extends TollgateError {
  constructor() {
    super(...refusal("ShuttingDownError", "shutting_down"), "Server is shutting down", {
      connection: "close",
      "retry-after": "1",
    });
  }
}

/**
 * A configuration problem, found at start-up or by `tollgate config validate`.
 * `issues` each name the path in the file and what was expected.
 */
export class ConfigError extends Error {
  readonly code = "ERR_CONFIG";
  readonly issues: readonly string[];

  constructor(source: string, issues: readonly string[]) {
    super(`${source}: invalid configuration\n${issues.map((i) => `  ${i}`).join("\n")}`);
    this.name = "ConfigError";
    this.issues = issues;
  }
}

/**
 * The one place an error becomes a response. Anything that is not a
 * {@link TollgateError} is a bug or an unexpected failure: it becomes a
 * generic 500 whose message reveals nothing about the cause.
 */
export function toErrorResponse(err: unknown): ErrorResponse {
  const e =
    err instanceof TollgateError
      ? err
      : new TollgateError(...refusal("InternalError", "internal_error"), "Internal server error");
  return {
    status: e.status,
    headers: { "content-type": "application/json; charset=utf-8", ...e.headers },
    body: { error: { message: e.message, type: e.type, code: e.code, param: e instanceof InvalidParameterError ? e.param : null } },
  };
}

/**
 * 429: the client used up a quota (Llama Stack's message, OpenAI's code).
 * Carries `Retry-After` (seconds until the exhausted window resets) and the
 * IETF `RateLimit` / `RateLimit-Policy` fields.
 */
export class QuotaExceededError extends TollgateError {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number, headers: Record<string, string> = {}, refused = refusal("QuotaExceededError", "rate_limit_exceeded"), message = "Quota exceeded") {
    super(...refused, message, {
      ...headers,
      "retry-after": String(retryAfterSeconds),
    });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * 429 `budget_exceeded`: the spend in a window of a `{spend, period}` limit
 * (the principal's or the key's) has reached its budget. A quota refusal
 * like the others (`Retry-After` when the window resets), never forwarded.
 */
export class BudgetExceededError extends QuotaExceededError {
  constructor(retryAfterSeconds: number, headers: Record<string, string> = {}) {
    super(retryAfterSeconds, headers, refusal("BudgetExceededError", "budget_exceeded"), "Budget exceeded");
  }
}

/** 503: the quota store could not answer and `failure_mode` is `closed`. */
export class QuotaUnavailableError extends TollgateError {
  constructor() {
    super(...refusal("QuotaUnavailableError", "quota_store_unavailable"), "Quota service unavailable", { "retry-after": "1" });
  }
}

/** 400: a JSON body nested deeper than the gateway reads (src/gateway/json.ts). */
export class JsonTooDeepError extends TollgateError {
  constructor(maxDepth: number) {
    super(...refusal("JsonTooDeepError", "json_too_deep"), `JSON body nested deeper than ${maxDepth} levels`);
  }
}

/**
 * 503: the bytes the gateway holds for request bodies it must read (across
 * every request in flight) would pass `server.max_buffered_bytes`. The client
 * may retry: the memory frees as the requests ahead of it finish.
 */
export class OverloadedError extends TollgateError {
  constructor() {
    super(...refusal("OverloadedError", "overloaded"), "Server is overloaded, retry later", { "retry-after": "1" });
  }
}

/**
 * 503: the record store (API keys, resource owners) failed or did not answer
 * within its deadline. Never a 500, never a wait: the client may retry. A
 * create the upstream made but whose owner could not be recorded gets this
 * too, with a message saying so (the resource stays hidden from everyone the
 * owner would not share it with: docs/security.md, "Faults in the stores").
 */
export class StoreUnavailableError extends TollgateError {
  constructor(message = "Record store unavailable") {
    super(...refusal("StoreUnavailableError", "store_unavailable"), message, { "retry-after": "1" });
  }
}

/**
 * 404: the request is for a route no catalog entry declares
 * (`server.resources.unlisted: deny`); it is never forwarded. Like nginx
 * with only the `location` blocks it was given, or an Envoy route table
 * without a catch-all: what is not declared does not exist.
 */
export class RouteNotFoundError extends TollgateError {
  constructor() {
    super(...refusal("RouteNotFoundError", "route_not_found"), "Route not found");
  }
}
