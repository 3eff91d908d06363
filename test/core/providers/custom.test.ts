import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AuthError, IdentityUnavailableError } from "../../../src/core/errors.js";
import { createCustomProvider, MAX_AUTH_RESPONSE_BYTES, parsePythonQuery, type CustomProviderConfig } from "../../../src/core/providers/custom.js";
import type { AuthProvider, AuthRequest } from "../../../src/core/providers/types.js";
import { startCustomAuth, type CustomAuthServer } from "../../support/custom-auth.js";
import { captureLog } from "../../support/log.js";
import { closedPort, refusal } from "../../support/refusal.js";
import { selfSignedCertificate, type TestCertificate } from "../../support/tls.js";

const TOKEN = "sk-test-0123456789abcdef";
const OTHER_TOKEN = "sk-unknown-9876543210";

function authRequest(overrides: Partial<AuthRequest> = {}): AuthRequest {
  return {
    token: TOKEN,
    path: "/v1/models",
    query: "",
    headers: { authorization: `Bearer ${TOKEN}`, "user-agent": "test-agent" },
    remoteAddress: "127.0.0.1",
    ...overrides,
  };
}

describe("custom provider", () => {
  let auth: CustomAuthServer;
  let provider: AuthProvider;
  const captured = captureLog();

  function config(overrides: Partial<CustomProviderConfig> = {}): CustomProviderConfig {
    return { type: "custom", endpoint: auth.url, timeout_ms: 2000, verify_tls: true, ...overrides };
  }

  before(async () => {
    auth = await startCustomAuth({
      users: { [TOKEN]: { principal: "alice", attributes: { roles: ["admin", "user"], teams: ["ml"] } } },
    });
    provider = createCustomProvider(config(), { log: captured.log });
  });

  after(async () => {
    await provider.close();
    await auth.close();
  });

  function reset(): void {
    auth.setBehaviour({ status: undefined, body: undefined, delayMs: undefined });
    auth.requests.length = 0;
  }

  test("it POSTs Llama Stack's AuthRequest: api_key, the canonical path, headers without authorization, params as lists", async () => {
    reset();
    await provider.authenticate(
      authRequest({
        path: "/v1/chat/completions",
        query: "limit=100&offset=0&tag=a&tag=b",
        headers: {
          authorization: `Bearer ${TOKEN}`,
          "content-type": "application/json",
          "user-agent": "test-agent",
        },
      }),
    );
    assert.deepEqual(auth.requests, [
      {
        api_key: TOKEN,
        request: {
          path: "/v1/chat/completions",
          headers: { "content-type": "application/json", "user-agent": "test-agent" },
          params: { limit: ["100"], offset: ["0"], tag: ["a", "b"] },
        },
      },
    ]);
  });

  test("repeated headers reach the endpoint joined with a comma, names lower-case", async () => {
    reset();
    await provider.authenticate(authRequest({ headers: { "X-Trace": "one", accept: ["a/b", "c/d"] } }));
    assert.deepEqual(auth.requests[0]!.request.headers, { "x-trace": "one", accept: "a/b, c/d" });
  });

  test("duplicate Authorization headers are not forwarded either", async () => {
    reset();
    await provider.authenticate(authRequest({ headers: { authorization: ["Bearer a", "Bearer b"], "x-a": "1" } }));
    assert.deepEqual(auth.requests[0]!.request.headers, { "x-a": "1" });
  });

  test("a 200 with a principal and attributes becomes the user", async () => {
    reset();
    const user = await provider.authenticate(authRequest());
    assert.equal(user.principal, "alice");
    assert.deepEqual(user.attributes, { roles: ["admin", "user"], teams: ["ml"] });
  });

  test("a 200 with null attributes is a user without attributes", async () => {
    reset();
    auth.setBehaviour({ body: { principal: "bob", attributes: null } });
    const user = await provider.authenticate(authRequest());
    assert.equal(user.principal, "bob");
    assert.deepEqual(user.attributes, {});
  });

  test("a token the endpoint refuses with 401 is a 401 'Authentication failed: 401'", async () => {
    reset();
    const err = await refusal(provider.authenticate(authRequest({ token: OTHER_TOKEN })));
    assert.ok(err instanceof AuthError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "invalid_token");
    assert.equal(err.message, "Authentication failed: 401");
  });

  test("a 403 from the endpoint is a 401 'Authentication failed: 403'", async () => {
    reset();
    auth.setBehaviour({ status: 403 });
    const err = await refusal(provider.authenticate(authRequest()));
    assert.equal(err.status, 401);
    assert.equal(err.message, "Authentication failed: 403");
  });

  test("a 500 from the endpoint is a 503: the service is broken, not the token", async () => {
    reset();
    auth.setBehaviour({ status: 500 });
    const err = await refusal(provider.authenticate(authRequest()));
    assert.ok(err instanceof IdentityUnavailableError);
    assert.equal(err.status, 503);
    assert.equal(err.message, "Authentication service error");
  });

  for (const [name, body] of [
    ["text that is not JSON", "<html>oops</html>"],
    ["a JSON array", [1, 2]],
    ["no principal", { attributes: { roles: ["x"] } }],
    ["a numeric principal", { principal: 42 }],
    ["an empty principal", { principal: "" }],
    ["attributes that are not string lists", { principal: "p", attributes: { roles: "admin" } }],
    ["a non-string message", { principal: "p", message: { text: "hi" } }],
  ] as const) {
    test(`a 200 carrying ${name} is a 401 'Invalid authentication response format'`, async () => {
      reset();
      auth.setBehaviour({ body });
      const err = await refusal(provider.authenticate(authRequest()));
      assert.equal(err.status, 401);
      assert.equal(err.code, "invalid_token");
      assert.equal(err.message, "Invalid authentication response format");
    });
  }

  test("a 200 body over the size limit is refused without being read whole", async () => {
    reset();
    auth.setBehaviour({ body: { principal: "p", padding: "x".repeat(MAX_AUTH_RESPONSE_BYTES) } });
    const err = await refusal(provider.authenticate(authRequest()));
    assert.equal(err.status, 401);
    assert.equal(err.message, "Invalid authentication response format");
  });

  test("an endpoint slower than timeout_ms is a 503 'Authentication service timeout', on time", async () => {
    reset();
    auth.setBehaviour({ delayMs: 2000 });
    const fast = createCustomProvider(config({ timeout_ms: 150 }), { log: captured.log });
    try {
      const started = Date.now();
      const err = await refusal(fast.authenticate(authRequest()));
      const elapsed = Date.now() - started;
      assert.equal(err.status, 503);
      assert.equal(err.message, "Authentication service timeout");
      assert.ok(elapsed < 1500, `took ${elapsed} ms`);
    } finally {
      await fast.close();
    }
  });

  test("an endpoint nobody listens on is a 503 'Authentication service unavailable'", async () => {
    const port = await closedPort();
    const down = createCustomProvider(config({ endpoint: `http://127.0.0.1:${port}/validate` }), { log: captured.log });
    try {
      const err = await refusal(down.authenticate(authRequest()));
      assert.equal(err.status, 503);
      assert.equal(err.code, "identity_provider_unavailable");
      assert.equal(err.message, "Authentication service unavailable");
    } finally {
      await down.close();
    }
  });

  test("a client that goes away cancels the call to the endpoint at once", async () => {
    reset();
    auth.setBehaviour({ delayMs: 2000 });
    const client = new AbortController();
    const started = Date.now();
    const pending = refusal(provider.authenticate(authRequest({ signal: client.signal })));
    setTimeout(() => client.abort(), 50);
    const err = await pending;
    assert.equal(err.status, 503);
    assert.ok(Date.now() - started < 1500);
  });

  test("the 401 message for a missing token names neither the endpoint's host and port nor its path or credentials", () => {
    const p = createCustomProvider(config({ endpoint: "https://svc:secret@auth.example:8443/private/validate" }), { log: captured.log });
    assert.equal(p.authRequiredMessage, "Authentication required. Please provide your API key as a Bearer token in the Authorization header");
    assert.equal(p.credential, "bearer");
    assert.equal(p.type, "custom");
    void p.close();
  });

  test("credentials in the endpoint URL are sent as HTTP Basic, and the request is JSON", async () => {
    reset();
    auth.requestHeaders.length = 0;
    const withCredentials = createCustomProvider(config({ endpoint: auth.url.replace("http://", "http://svc:p%40ss@") }), { log: captured.log });
    try {
      await withCredentials.authenticate(authRequest());
      // The previous test's aborted call can reach the server after reset(): ours is the one carrying credentials.
      const headers = auth.requestHeaders.find((h) => h.authorization !== undefined) ?? auth.requestHeaders.at(-1)!;
      assert.equal(headers.authorization, `Basic ${Buffer.from("svc:p@ss").toString("base64")}`);
      assert.equal(headers["content-type"], "application/json");
    } finally {
      await withCredentials.close();
    }
  });

  test("without credentials in the endpoint URL no Authorization header is sent to it", async () => {
    reset();
    auth.requestHeaders.length = 0;
    await provider.authenticate(authRequest());
    assert.equal(auth.requestHeaders[0]!.authorization, undefined);
  });

  test("a tls_cafile that cannot be read fails creation, naming the file", () => {
    assert.throws(
      () => createCustomProvider(config({ tls_cafile: "/nonexistent/ca.pem" }), { log: captured.log }),
      /tls_cafile \/nonexistent\/ca\.pem: ENOENT/,
    );
  });

  test("no error message and no log line ever contains the token", () => {
    const everything = captured.text();
    assert.ok(everything.length > 0, "the tests above should have logged something");
    assert.ok(!everything.includes(TOKEN), "the log contains the token");
    assert.ok(!everything.includes(OTHER_TOKEN), "the log contains the token");
  });
});

describe("custom provider over HTTPS", () => {
  let certificate: TestCertificate | undefined;
  let auth: CustomAuthServer | undefined;
  const { log } = captureLog("silent");

  before(async () => {
    certificate = selfSignedCertificate();
    if (!certificate) return; // no openssl here: the tests below skip
    auth = await startCustomAuth({
      users: { [TOKEN]: { principal: "alice" } },
      tls: { key: certificate.key, cert: certificate.cert },
    });
  });

  after(async () => {
    await auth?.close();
    certificate?.remove();
  });

  async function authenticateWith(overrides: Partial<CustomProviderConfig>) {
    const provider = createCustomProvider(
      { type: "custom", endpoint: auth!.url, timeout_ms: 2000, verify_tls: true, ...overrides },
      { log },
    );
    try {
      return await provider.authenticate(authRequest());
    } finally {
      await provider.close();
    }
  }

  test("a certificate signed by tls_cafile is trusted", async (t) => {
    if (!auth) return t.skip("openssl is not available");
    const user = await authenticateWith({ tls_cafile: certificate!.certFile });
    assert.equal(user.principal, "alice");
  });

  test("a certificate no trusted CA signed is a 503, not a pass", async (t) => {
    if (!auth) return t.skip("openssl is not available");
    const err = await refusal(authenticateWith({}));
    assert.equal(err.status, 503);
    assert.equal(err.message, "Authentication service unavailable");
  });

  test("verify_tls: false accepts any certificate", async (t) => {
    if (!auth) return t.skip("openssl is not available");
    const user = await authenticateWith({ verify_tls: false });
    assert.equal(user.principal, "alice");
  });
});

describe("parsePythonQuery (urllib.parse.parse_qs)", () => {
  const cases: Array<[string, Record<string, string[]>]> = [
    ["", {}],
    ["a=1", { a: ["1"] }],
    ["a=1&a=2&b=3", { a: ["1", "2"], b: ["3"] }],
    ["q=hello+world", { q: ["hello world"] }],
    ["name%20x=%41%62", { "name x": ["Ab"] }],
    ["empty=&flag&=orphan", { "": ["orphan"] }],
    ["a=1&&b=2", { a: ["1"], b: ["2"] }],
    ["bad=%zz%4", { bad: ["%zz%4"] }],
    ["utf=%C3%A9", { utf: ["é"] }],
    ["broken=%C3", { broken: ["\uFFFD"] }],
    ["eq=a=b", { eq: ["a=b"] }],
    ["semi=1;x=2", { semi: ["1;x=2"] }],
  ];
  for (const [query, expected] of cases) {
    test(`${JSON.stringify(query)} parses as ${JSON.stringify(expected)}`, () => {
      assert.deepEqual({ ...parsePythonQuery(query) }, expected);
    });
  }

  test("a parameter named __proto__ is an ordinary entry", () => {
    const params = parsePythonQuery("__proto__=x");
    assert.equal(JSON.stringify(params), '{"__proto__":["x"]}');
  });
});
