import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as tollgate from "../../src/index.js";
import { ERRORS, TollgateError, toErrorResponse } from "../../src/core/errors.js";

/** One refusal of each class, made as the code that raises it does. */
const SAMPLES: Record<Exclude<keyof typeof ERRORS, "InternalError">, () => TollgateError> = {
  BadRequestError: () => new tollgate.BadRequestError("Invalid request path", "invalid_path"),
  InvalidParameterError: () => new tollgate.InvalidParameterError("expires_in", "expires_in must be a duration such as 30d"),
  JsonTooDeepError: () => new tollgate.JsonTooDeepError(64),
  AuthError: () => new tollgate.AuthError("invalid_token", "Invalid token"),
  ForbiddenError: () => new tollgate.ForbiddenError("Access denied", "route_denied"),
  NotFoundError: () => new tollgate.NotFoundError("Model 'x' not found.", "model_not_found"),
  RouteNotFoundError: () => new tollgate.RouteNotFoundError(),
  MethodNotAllowedError: () => new tollgate.MethodNotAllowedError("TRACE"),
  RequestTimeoutError: () => new tollgate.RequestTimeoutError(),
  PayloadTooLargeError: () => new tollgate.PayloadTooLargeError(1024),
  UnsupportedMediaTypeError: () => new tollgate.UnsupportedMediaTypeError(),
  QuotaExceededError: () => new tollgate.QuotaExceededError(30),
  BudgetExceededError: () => new tollgate.BudgetExceededError(30),
  HeadersTooLargeError: () => new tollgate.HeadersTooLargeError(),
  UpstreamError: () => new tollgate.UpstreamError(),
  IdentityUnavailableError: () => new tollgate.IdentityUnavailableError(),
  QuotaUnavailableError: () => new tollgate.QuotaUnavailableError(),
  StoreUnavailableError: () => new tollgate.StoreUnavailableError(),
  OverloadedError: () => new tollgate.OverloadedError(),
  ShuttingDownError: () => new tollgate.ShuttingDownError(),
  UpstreamTimeoutError: () => new tollgate.UpstreamTimeoutError(),
};

describe("errors as a table", () => {
  test("every refusal class of the table is exported from the package entry and answers with its row's status, type and one of its codes", () => {
    for (const [name, make] of Object.entries(SAMPLES)) {
      const err = make();
      const row = ERRORS[name as keyof typeof SAMPLES];
      assert.equal(err.constructor, (tollgate as Record<string, unknown>)[name], `${name} is not the package's export`);
      assert.ok(err instanceof TollgateError);
      assert.equal(err.name, name);
      const { status, body } = toErrorResponse(err);
      assert.equal(status, row.status, name);
      assert.equal(body.error.type, row.type, name);
      assert.ok((row.codes as readonly string[]).includes(body.error.code), `${name}: ${body.error.code} is not in its row`);
      // Only a refusal about one field names it (OpenAI's `param`).
      assert.equal(body.error.param, err instanceof tollgate.InvalidParameterError ? err.param : null, name);
    }
  });

  test("anything that is not a refusal is the table's internal_error, revealing nothing", () => {
    const { status, body } = toErrorResponse(new Error("connect ECONNREFUSED 10.0.0.7:5432"));
    assert.equal(status, ERRORS.InternalError.status);
    assert.deepEqual(body.error, { message: "Internal server error", type: "server_error", code: "internal_error", param: null });
  });
});
