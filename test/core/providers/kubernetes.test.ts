import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { providerConfigSchema } from "../../../src/core/config/schema.js";
import { createKubernetesProvider, type KubernetesProviderConfig } from "../../../src/core/providers/kubernetes.js";
import type { AuthProvider } from "../../../src/core/providers/types.js";
import { startFakeKubernetes, type FakeKubernetes } from "../../support/fake-kubernetes.js";
import { captureLog } from "../../support/log.js";
import { closedPort } from "../../support/refusal.js";
import { outcomeOf, type Outcome } from "../../support/refusal.js";
import { selfSignedCertificate, type TestCertificate } from "../../support/tls.js";

const SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.service-account-token.signature0123";
const USER_TOKEN = "eyJhbGciOiJSUzI1NiJ9.user-token.signature456789";

describe("kubernetes provider, against a fake API server speaking the SelfSubjectReview wire format", () => {
  let kube: FakeKubernetes;
  const captured = captureLog();
  const providers: AuthProvider[] = [];

  function provider(overrides: Record<string, unknown> = {}): AuthProvider {
    const config = providerConfigSchema.parse({ type: "kubernetes", api_server_url: kube.url, cache_ttl_ms: 0, ...overrides }) as KubernetesProviderConfig;
    const p = createKubernetesProvider(config, { log: captured.log });
    providers.push(p);
    return p;
  }

  async function outcome(p: AuthProvider, token: string): Promise<Outcome> {
    return outcomeOf(p, token);
  }

  before(async () => {
    kube = await startFakeKubernetes({
      [SA_TOKEN]: { username: "system:serviceaccount:ml:trainer", groups: ["system:serviceaccounts", "system:serviceaccounts:ml", "system:authenticated"] },
      [USER_TOKEN]: { username: "alice@example.com", groups: ["devs"], extra: { scopes: ["models.read"] } },
    });
  });

  after(async () => {
    for (const p of providers) await p.close();
    await kube.close();
  });

  test("a service-account token becomes its username, with username and groups → roles by default", async () => {
    assert.deepEqual(await outcome(provider(), SA_TOKEN), {
      principal: "system:serviceaccount:ml:trainer",
      attributes: { roles: ["system:serviceaccount:ml:trainer", "system:serviceaccounts", "system:serviceaccounts:ml", "system:authenticated"] },
    });
  });

  test("it POSTs a SelfSubjectReview with the caller's own token", async () => {
    kube.requests.length = 0;
    await outcome(provider(), SA_TOKEN);
    assert.deepEqual(kube.requests, [
      {
        method: "POST",
        path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        authorization: `Bearer ${SA_TOKEN}`,
        body: JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" }),
      },
    ]);
  });

  test("claims_mapping reaches nested userInfo fields with dot paths", async () => {
    assert.deepEqual(await outcome(provider({ claims_mapping: { groups: "teams", "extra.scopes": "scopes" } }), USER_TOKEN), {
      principal: "alice@example.com",
      attributes: { teams: ["devs"], scopes: ["models.read"] },
    });
  });

  test("a token the API server rejects (401) is refused with 401 Invalid token", async () => {
    assert.deepEqual(await outcome(provider(), "not-a-kubernetes-token"), { status: 401, message: "Invalid token" });
  });

  test("an API server error is a 503, and so is an unreachable one", async () => {
    kube.failWith = 500;
    try {
      assert.deepEqual(await outcome(provider(), SA_TOKEN), { status: 503, message: "Kubernetes API server unavailable" });
    } finally {
      kube.failWith = undefined;
    }
    const p = provider({ api_server_url: `http://127.0.0.1:${await closedPort()}` });
    assert.deepEqual(await outcome(p, SA_TOKEN), { status: 503, message: "Kubernetes API server unavailable" });
  });

  test("an API server slower than timeout_ms is a 503", async () => {
    kube.delayMs = 1000;
    try {
      assert.deepEqual(await outcome(provider({ timeout_ms: 150 }), SA_TOKEN), { status: 503, message: "Kubernetes API server timeout" });
    } finally {
      kube.delayMs = 0;
    }
  });

  test("a validated token is reused for cache_ttl_ms", async () => {
    const p = provider({ cache_ttl_ms: 60_000 });
    kube.requests.length = 0;
    for (let i = 0; i < 5; i++) await outcome(p, SA_TOKEN);
    assert.equal(kube.requests.length, 1);
  });

  test("the message for a missing token is Llama Stack's", () => {
    assert.equal(provider().authRequiredMessage, "Authentication required. Please provide a valid Kubernetes authentication token in the Authorization header");
  });

  test("readiness asks GET /readyz without a credential, says http_500 while the API server fails, and asks at most once per 2 s", async () => {
    const p = provider();
    const probes = () => kube.requests.filter((r) => r.path === "/readyz");
    assert.equal(await p.ready!(), undefined);
    assert.deepEqual(probes().map((r) => [r.method, r.authorization]), [["GET", undefined]]);
    kube.failWith = 500;
    try {
      assert.equal(await p.ready!(), undefined, "within 2 s the last answer is reused");
      assert.equal(probes().length, 1);
      await new Promise((r) => setTimeout(r, 2_100));
      assert.equal(await p.ready!(), "http_500");
      assert.equal(probes().length, 2);
    } finally {
      kube.failWith = undefined;
    }
  });

  test("no token ever appears in the log", () => {
    const text = captured.text();
    // Failed checks of those tokens were logged (where a careless line would carry them), so the search below can find one.
    assert.match(text, /"msg":"Kubernetes API server failed"/);
    for (const token of [SA_TOKEN, USER_TOKEN]) assert.equal(text.includes(token), false);
  });
});

describe("kubernetes provider over HTTPS", () => {
  let certificate: TestCertificate | undefined;
  let kube: FakeKubernetes | undefined;
  const { log } = captureLog("silent");

  before(async () => {
    certificate = selfSignedCertificate();
    if (!certificate) return; // no openssl here: the tests below skip
    kube = await startFakeKubernetes({ [SA_TOKEN]: { username: "sa" } }, { key: certificate.key, cert: certificate.cert });
  });

  after(async () => {
    await kube?.close();
    certificate?.remove();
  });

  async function principalWith(overrides: Record<string, unknown>): Promise<string> {
    const config = providerConfigSchema.parse({ type: "kubernetes", api_server_url: kube!.url, ...overrides }) as KubernetesProviderConfig;
    const p = createKubernetesProvider(config, { log });
    try {
      return (await p.authenticate({ token: SA_TOKEN, path: "/", query: "", headers: {} })).principal;
    } catch (err) {
      return `${(err as { status: number }).status}`;
    } finally {
      await p.close();
    }
  }

  test("the cluster CA given as tls_cafile is trusted", async (t) => {
    if (!kube) return t.skip("openssl is not available");
    assert.equal(await principalWith({ tls_cafile: certificate!.certFile }), "sa");
  });

  test("an untrusted certificate is a 503, and verify_tls: false accepts it", async (t) => {
    if (!kube) return t.skip("openssl is not available");
    assert.equal(await principalWith({}), "503");
    assert.equal(await principalWith({ verify_tls: false }), "sa");
  });
});
