import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import LlamaStackClient, * as Llama from "llama-stack-client";
import OpenAI, { toFile } from "openai";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { assertForwarded, assertNotForwarded, newTag, TAG_HEADER } from "../support/forwarded.js";
import { linesContaining, startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// Issue 15: what a Llama Stack client sees through Tollgate is what the Llama
// Stack server would show it. Both official clients (`llama-stack-client` and
// `openai`), a real gateway process, the demo upstream answering with Llama
// Stack's wording (`x-demo-wording: llama_stack`), the custom auth provider.

const TOKENS = { alice: "tok-alice-Lq3v9Xk2", bob: "tok-bob-Wm7c1Zp8", admin: "tok-admin-Rf5t2Yh6" } as const;
type Who = keyof typeof TOKENS;

const POLICY = {
  // Nobody but admins reads demo-embed; everyone may create; owners do anything to their own; unowned (models) is readable.
  access_policy: [
    { forbid: { actions: ["create", "read", "update", "delete"], resource: "model::demo-embed" }, unless: "user with admin in roles" },
    { permit: { actions: ["create"] } },
    { permit: { actions: ["read", "update", "delete"] }, when: "user is owner" },
    { permit: { actions: ["read"] }, when: "resource is unowned" },
  ],
  route_policy: [
    { forbid: { paths: "/v1/embeddings" }, unless: "user with admin in roles" },
    { permit: { paths: "*" } },
  ],
};

/** The reference's not-found message (llama_stack_api/common/errors.py). */
const modelNotFound = (id: string) => `Model '${id}' not found. Use 'client.models.list()' to list available Models.`;
const fileNotFound = (id: string) => `File '${id}' not found. Use 'client.files.list()' to list available Files.`;
const responseNotFound = (id: string) => `Response '${id}' not found. Use 'client.responses.list()' to list available Responses.`;
const vectorStoreNotFound = (id: string) => `Vector Store '${id}' not found. Use 'client.vector_dbs.list()' to list available Vector Stores.`;

/** What a refusal looked like to a client: status, the SDK's error class, and the envelope. */
interface Seen {
  status: number;
  sdkError: string;
  message: string;
  code: string | undefined;
  type: string | undefined;
}

/** Awaits a call that must fail with an SDK error; returns what the client saw. llama-stack-client keeps the whole body in `error`, openai its `error` member. */
async function refused(call: Promise<unknown>): Promise<Seen> {
  try {
    await call;
  } catch (err) {
    if (err instanceof OpenAI.APIError) {
      const e = err.error as { message: string; code?: string; type?: string };
      return { status: err.status ?? 0, sdkError: err.constructor.name, message: e.message, code: e.code, type: e.type };
    }
    if (err instanceof Llama.APIError) {
      const e = (err.error as { error: { message: string; code?: string; type?: string } }).error;
      return { status: err.status ?? 0, sdkError: err.constructor.name, message: e.message, code: e.code, type: e.type };
    }
    throw err;
  }
  assert.fail("expected the call to be refused");
}

describe("a Llama Stack client through Tollgate (issue 15)", { timeout: 120_000 }, () => {
  let upstream: UpstreamProcess;
  let auth: CustomAuthServer;
  let gateway: GatewayProcess;

  /** Clients whose every request carries `tag` (forwarded.ts), so that a refusal can prove it never reached the upstream. */
  const llama = (who: Who, tag: string = newTag().tag) =>
    new LlamaStackClient({ baseURL: gateway.url, apiKey: TOKENS[who], maxRetries: 0, timeout: 10_000, defaultHeaders: { "x-demo-wording": "llama_stack", [TAG_HEADER]: tag } });
  const openai = (who: Who, tag: string = newTag().tag) =>
    new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: TOKENS[who], maxRetries: 0, timeout: 10_000, defaultHeaders: { "x-demo-wording": "llama_stack", [TAG_HEADER]: tag } });

  before(async () => {
    upstream = await startUpstreamProcess();
    auth = await startCustomAuth({
      users: {
        [TOKENS.alice]: { principal: "alice", attributes: { roles: ["user"] } },
        [TOKENS.bob]: { principal: "bob", attributes: { roles: ["user"] } },
        [TOKENS.admin]: { principal: "admin", attributes: { roles: ["admin"] } },
      },
    });
    gateway = await startGateway({
      config: { server: { auth: { provider_config: { type: "custom", endpoint: auth.url }, ...POLICY } }, upstream: { url: upstream.url } },
    });
  });

  after(async () => {
    await gateway?.close();
    await auth?.close();
    await upstream?.close();
  });

  test("a route_policy denial says 'Access denied: insufficient permissions for route <path>' (PermissionDeniedError) and is not forwarded", async () => {
    for (const [client, id] of [[llama, newTag().tag], [openai, newTag().tag]] as const) {
      const seen = await refused(client("bob", id).embeddings.create({ model: "demo-small", input: "hi" }));
      assert.deepEqual(seen, {
        status: 403,
        sdkError: "PermissionDeniedError",
        message: "Access denied: insufficient permissions for route /v1/embeddings",
        code: "route_denied",
        type: "permission_error",
      });
      await assertNotForwarded(upstream, id);
    }
    // The admin passes the same route, and is found upstream by its tag.
    const passed = newTag().tag;
    assert.equal((await llama("admin", passed).embeddings.create({ model: "demo-small", input: "hi" })).data.length, 1);
    await assertForwarded(upstream, passed);
  });

  test("a model the user may not read is refused exactly as a model that does not exist (NotFoundError, the reference's message)", async () => {
    const chat = (client: typeof llama | typeof openai, model: string, testId?: string): Promise<unknown> => {
      const messages = [{ role: "user" as const, content: "hi" }];
      return client === llama ? llama("alice", testId).chat.completions.create({ model, messages }) : openai("alice", testId).chat.completions.create({ model, messages });
    };
    for (const client of [llama, openai]) {
      const hiddenId = newTag().tag;
      const hidden = await refused(chat(client, "demo-embed", hiddenId));
      await assertNotForwarded(upstream, hiddenId);
      const missing = await refused(chat(client, "no-such-model"));
      assert.deepEqual(hidden, { ...missing, message: modelNotFound("demo-embed") });
      assert.deepEqual(missing, { status: 404, sdkError: "NotFoundError", message: modelNotFound("no-such-model"), code: "model_not_found", type: "not_found_error" });
      // The same for a retrieve.
      const hiddenModelTag = newTag().tag;
      const hiddenModel = await refused(client("alice", hiddenModelTag).models.retrieve("demo-embed"));
      await assertNotForwarded(upstream, hiddenModelTag);
      const missingModel = await refused(client("alice").models.retrieve("no-such-model"));
      assert.deepEqual(hiddenModel, { ...missingModel, message: modelNotFound("demo-embed") });
    }
  });

  test("a file or response the user may not read gets the reference's not-found message for its type, as a missing one does", async () => {
    const file = await openai("alice").files.create({ file: await toFile(Buffer.from("private"), "a.txt"), purpose: "assistants" });
    const response = await llama("alice").responses.create({ model: "demo-small", input: "hello" });
    for (const client of [llama, openai]) {
      const id = newTag().tag;
      assert.deepEqual(await refused(client("bob", id).files.retrieve(file.id)), { status: 404, sdkError: "NotFoundError", message: fileNotFound(file.id), code: "not_found", type: "not_found_error" });
      await assertNotForwarded(upstream, id);
      const missing = await refused(client("bob").files.retrieve("file-999999"));
      assert.deepEqual(missing, { status: 404, sdkError: "NotFoundError", message: fileNotFound("file-999999"), code: "not_found", type: "not_found_error" });
      assert.deepEqual(await refused(client("bob").responses.retrieve(response.id)), { ...missing, message: responseNotFound(response.id) });
      assert.equal((await refused(client("bob").responses.retrieve("resp_999999"))).message, responseNotFound("resp_999999"));
    }
  });

  test("a denied delete of a store-backed resource (file, response) is 404 NotFoundError, as in the reference, and nothing is deleted", async () => {
    const file = await openai("alice").files.create({ file: await toFile(Buffer.from("keep me"), "k.txt"), purpose: "assistants" });
    const response = await openai("alice").responses.create({ model: "demo-small", input: "keep" });
    for (const client of [llama, openai]) {
      const id = newTag().tag;
      assert.deepEqual(await refused(client("bob", id).files.delete(file.id)), { status: 404, sdkError: "NotFoundError", message: fileNotFound(file.id), code: "not_found", type: "not_found_error" });
      assert.deepEqual(await refused(client("bob", id).responses.delete(response.id)), { status: 404, sdkError: "NotFoundError", message: responseNotFound(response.id), code: "not_found", type: "not_found_error" });
      await assertNotForwarded(upstream, id);
    }
    assert.equal((await llama("alice").files.retrieve(file.id)).id, file.id);
    assert.equal((await llama("alice").responses.retrieve(response.id)).id, response.id);
  });

  test("a registry-backed resource (vector store) keeps 403 PermissionDeniedError for a denied delete, and 404 for a denied read", async () => {
    const store = await llama("alice").vectorStores.create({ name: "alice's" });
    for (const client of [llama, openai]) {
      const id = newTag().tag;
      const denied = await refused(client("bob", id).vectorStores.delete(store.id));
      assert.equal(denied.status, 403);
      assert.equal(denied.sdkError, "PermissionDeniedError");
      assert.equal(denied.code, "access_denied");
      assert.deepEqual(await refused(client("bob", id).vectorStores.retrieve(store.id)), { status: 404, sdkError: "NotFoundError", message: vectorStoreNotFound(store.id), code: "not_found", type: "not_found_error" });
      await assertNotForwarded(upstream, id);
    }
    assert.equal((await llama("alice").vectorStores.retrieve(store.id)).id, store.id);
  });

  test("a malformed Authorization header gets exactly 'Invalid Authorization header format'; the detail is in WWW-Authenticate and the log, never the token", async () => {
    // Two tokens in one header: the SDKs send `Bearer <apiKey>` as given.
    const secret = "tok-secret-Hh4Jd8Qa";
    const { tag, headers } = newTag();
    for (const client of [
      new LlamaStackClient({ baseURL: gateway.url, apiKey: `${secret} extra`, maxRetries: 0, defaultHeaders: headers }),
      new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: `${secret} extra`, maxRetries: 0, defaultHeaders: headers }),
    ]) {
      const seen = await refused(client.models.list());
      assert.deepEqual(seen, { status: 401, sdkError: "AuthenticationError", message: "Invalid Authorization header format", code: "invalid_request", type: "authentication_error" });
    }
    const res = await fetch(`${gateway.url}/v1/models`, { headers: { ...headers, authorization: `Basic ${secret}` } });
    assert.equal(res.status, 401);
    await assertNotForwarded(upstream, tag);
    assert.equal(((await res.json()) as { error: { message: string } }).error.message, "Invalid Authorization header format");
    assert.equal(res.headers.get("www-authenticate"), `Bearer realm="tollgate", error="invalid_request", error_description="expected 'Bearer <token>'"`);
    await gateway.waitForLog((l) => l.msg === "credential refused" && l.detail === "exactly one bearer token is allowed");
    await gateway.waitForLog((l) => l.msg === "credential refused" && l.detail === "expected 'Bearer <token>'");
    assert.deepEqual(linesContaining(gateway.stdout() + gateway.stderr(), secret), []);
  });
});
