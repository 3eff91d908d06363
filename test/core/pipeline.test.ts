import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DEFAULT_PUBLIC_PATHS } from "../../src/core/config/schema.js";
import { AuthError, BadRequestError, IdentityUnavailableError, toErrorResponse } from "../../src/core/errors.js";
import { authorizationHeaders, createPipeline, type PipelineRequest } from "../../src/core/pipeline.js";
import type { AuthProvider, AuthRequest } from "../../src/core/providers/types.js";
import { makeUser } from "../../src/core/user.js";
import { refusal } from "../support/refusal.js";

const TOKEN = "tok-0123456789";

/**
 * A bearer provider that knows one token. It records what the pipeline
 * handed it, so tests can check what a provider sees.
 */
function tokenProvider(behaviour: (req: AuthRequest) => Promise<ReturnType<typeof makeUser>> = async (req) => {
  if (req.token === TOKEN) return makeUser("alice", { roles: ["admin"] });
  throw new AuthError("invalid_token", "Authentication failed: 401");
}) {
  const seen: AuthRequest[] = [];
  const provider: AuthProvider = {
    type: "test",
    credential: "bearer",
    authRequiredMessage: "Authentication required. Please provide your API key as a Bearer token (validated by auth.test)",
    async authenticate(req) {
      seen.push(req);
      return behaviour(req);
    },
    async close() {},
  };
  return { provider, seen };
}

function request(url: string, headers: PipelineRequest["headers"] = {}): PipelineRequest {
  return { method: "GET", url, headers, remoteAddress: "127.0.0.1" };
}

describe("pipeline: public paths", () => {
  const { provider, seen } = tokenProvider();
  const pipeline = createPipeline({ publicPaths: DEFAULT_PUBLIC_PATHS, provider });

  for (const url of ["/health", "/v1/health/", "/v1//health", "/v1/./health", "/v1/x/../health", "/%68ealth", "/version?verbose=1"]) {
    test(`${url} is public: no credential needed, no provider call`, async () => {
      seen.length = 0;
      const ctx = await pipeline.authorize(request(url));
      assert.equal(ctx.public, true);
      assert.equal(ctx.user, undefined);
      assert.equal(seen.length, 0);
    });
  }

  for (const url of ["/x/health", "/healthz", "/v1/models/health", "/v2/health", "/health.json", "/v1/secret/health"]) {
    test(`${url} is not public: it needs a credential`, async () => {
      const err = await refusal(pipeline.authorize(request(url)));
      assert.equal(err.status, 401);
    });
  }

  test("a public path with a bad credential is still public", async () => {
    const ctx = await pipeline.authorize(request("/health", { authorization: "Basic nope" }));
    assert.equal(ctx.public, true);
  });

  test("configured public paths given by a library caller are canonicalised", async () => {
    const p = createPipeline({ publicPaths: ["/ready/", "/v1//live"], provider });
    assert.equal((await p.authorize(request("/ready"))).public, true);
    assert.equal((await p.authorize(request("/v1/live/"))).public, true);
  });

  test("a public path that is not absolute fails createPipeline, naming it", () => {
    assert.throws(() => createPipeline({ publicPaths: ["health"], provider }), /public path "health"/);
  });
});

describe("pipeline: the canonical path", () => {
  test("the context carries the canonical path and the raw query", async () => {
    const pipeline = createPipeline({ publicPaths: [], provider: undefined });
    const ctx = await pipeline.authorize(request("/v1//%6Dodels/?limit=2&x=%2F"));
    assert.deepEqual(ctx, { path: "/v1/models", query: "limit=2&x=%2F", public: false, user: undefined });
  });

  test("a path that cannot be normalised is a 400 before authentication", async () => {
    const { provider, seen } = tokenProvider();
    const pipeline = createPipeline({ publicPaths: [], provider });
    const err = await refusal(pipeline.authorize(request("/v1/files%2Fetc", { authorization: `Bearer ${TOKEN}` })));
    assert.ok(err instanceof BadRequestError);
    assert.equal(err.status, 400);
    assert.equal(err.code, "invalid_path");
    assert.equal(seen.length, 0);
  });

  test("the provider sees the canonical path and the query", async () => {
    const { provider, seen } = tokenProvider();
    const pipeline = createPipeline({ publicPaths: [], provider });
    await pipeline.authorize(request("/v1/./chat//completions?stream=true", { authorization: `Bearer ${TOKEN}` }));
    assert.equal(seen[0]!.path, "/v1/chat/completions");
    assert.equal(seen[0]!.query, "stream=true");
    assert.equal(seen[0]!.token, TOKEN);
    assert.equal(seen[0]!.remoteAddress, "127.0.0.1");
  });
});

describe("pipeline: authentication", () => {
  test("a valid token yields the provider's user", async () => {
    const { provider } = tokenProvider();
    const ctx = await createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: `Bearer ${TOKEN}` }));
    assert.equal(ctx.public, false);
    assert.equal(ctx.user?.principal, "alice");
    assert.deepEqual(ctx.user?.attributes, { roles: ["admin"] });
  });

  test("a missing credential is a 401 with the provider's message and a bare Bearer challenge", async () => {
    const { provider, seen } = tokenProvider();
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models")));
    assert.ok(err instanceof AuthError);
    const response = toErrorResponse(err);
    assert.equal(response.status, 401);
    assert.equal(response.headers["www-authenticate"], 'Bearer realm="tollgate"');
    assert.deepEqual(response.body, {
      error: {
        message: "Authentication required. Please provide your API key as a Bearer token (validated by auth.test)",
        type: "authentication_error",
        code: "missing_credential",
        param: null,
      },
    });
    assert.equal(seen.length, 0);
  });

  test("an empty Authorization header counts as a missing credential", async () => {
    const { provider } = tokenProvider();
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: "" })));
    assert.equal(err.code, "missing_credential");
  });

  test("a malformed Authorization header is a 401 'Invalid Authorization header format' before the provider", async () => {
    const { provider, seen } = tokenProvider();
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: "Basic dXNlcjpwdw==" })));
    assert.equal(err.status, 401);
    assert.equal(err.message, "Invalid Authorization header format");
    assert.equal(err.headers["www-authenticate"], `Bearer realm="tollgate", error="invalid_request", error_description="expected 'Bearer <token>'"`);
    assert.equal(seen.length, 0);
  });

  test("two Authorization headers are refused, not guessed between", async () => {
    const { provider, seen } = tokenProvider();
    const err = await refusal(
      createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: [`Bearer ${TOKEN}`, "Bearer other"] })),
    );
    assert.equal(err.status, 401);
    assert.equal(err.message, "Invalid Authorization header format");
    assert.match(err.headers["www-authenticate"] ?? "", /error_description="exactly one Authorization header is allowed"/);
    assert.equal(seen.length, 0);
  });

  test("an AuthError from the provider passes through unchanged", async () => {
    const { provider } = tokenProvider();
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: "Bearer wrong" })));
    assert.ok(err instanceof AuthError);
    assert.equal(err.message, "Authentication failed: 401");
    assert.equal(err.headers["www-authenticate"], 'Bearer realm="tollgate", error="invalid_token"');
  });

  test("an IdentityUnavailableError from the provider passes through as 503", async () => {
    const { provider } = tokenProvider(async () => {
      throw new IdentityUnavailableError("Authentication service timeout");
    });
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: `Bearer ${TOKEN}` })));
    assert.equal(err.status, 503);
    assert.equal(err.message, "Authentication service timeout");
  });

  test("any other error from the provider fails closed as a 503 that reveals nothing, and is reported", async () => {
    const reported: unknown[] = [];
    const boom = new Error(`database password is hunter2, token ${TOKEN}`);
    const { provider } = tokenProvider(async () => {
      throw boom;
    });
    const pipeline = createPipeline({ publicPaths: [], provider, onProviderError: (err) => reported.push(err) });
    const err = await refusal(pipeline.authorize(request("/v1/models", { authorization: `Bearer ${TOKEN}` })));
    assert.ok(err instanceof IdentityUnavailableError);
    assert.equal(err.status, 503);
    assert.equal(err.message, "Authentication service error");
    assert.deepEqual(reported, [boom]);
  });

  test("a provider that throws a non-Error value also fails closed", async () => {
    const { provider } = tokenProvider(async () => {
      throw "string failure";
    });
    const err = await refusal(createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { authorization: `Bearer ${TOKEN}` })));
    assert.equal(err.status, 503);
  });

  test("without a provider every request passes with no user, whatever its Authorization header", async () => {
    const pipeline = createPipeline({ publicPaths: [], provider: undefined });
    const ctx = await pipeline.authorize(request("/v1/models", { authorization: "Garbage" }));
    assert.equal(ctx.user, undefined);
    assert.equal(ctx.public, false);
  });

  test("a headers provider is called without a bearer token, whatever the Authorization header holds", async () => {
    const seen: AuthRequest[] = [];
    const provider: AuthProvider = {
      type: "headers-test",
      credential: "headers",
      authRequiredMessage: "Authentication required.",
      async authenticate(req) {
        seen.push(req);
        return makeUser(String(req.headers["x-user"]));
      },
      async close() {},
    };
    const ctx = await createPipeline({ publicPaths: [], provider }).authorize(request("/v1/models", { "x-user": "bob", authorization: "Basic x" }));
    assert.equal(ctx.user?.principal, "bob");
    assert.equal(seen[0]!.token, undefined);
  });
});

describe("authorizationHeaders", () => {
  test("collects every Authorization header from rawHeaders, whatever its case", () => {
    assert.deepEqual(authorizationHeaders(["Host", "a", "Authorization", "Bearer 1", "x-y", "z", "AUTHORIZATION", "Bearer 2"]), ["Bearer 1", "Bearer 2"]);
  });

  test("is undefined when there is none", () => {
    assert.equal(authorizationHeaders(["Host", "a"]), undefined);
  });
});
