import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { providerConfigSchema } from "../../../src/core/config/schema.js";
import { createGitHubProvider, nextLink, type GitHubProviderConfig } from "../../../src/core/providers/github.js";
import type { AuthProvider } from "../../../src/core/providers/types.js";
import { startFakeGitHub, type FakeGitHub } from "../../support/fake-github.js";
import { captureLog } from "../../support/log.js";
import { closedPort } from "../../support/refusal.js";
import { outcomeOf, type Outcome } from "../../support/refusal.js";

const ALICE = "ghp_alice0123456789abcdefghijklmnopqrstu";
const BOB = "ghp_bob0123456789abcdefghijklmnopqrstuvw";
const CAROL = "github_pat_carol0123456789abcdefghijklmn";
const MANY_ORGS = Array.from({ length: 250 }, (_, i) => `org-${i}`);

describe("github_token provider, against a fake speaking GitHub's wire format", () => {
  let github: FakeGitHub;
  const captured = captureLog();
  const providers: AuthProvider[] = [];
  let clockOffsetMs = 0;

  function provider(overrides: Record<string, unknown> = {}): AuthProvider {
    const config = providerConfigSchema.parse({ type: "github_token", github_api_base_url: github.url, cache_ttl_ms: 0, ...overrides }) as GitHubProviderConfig;
    const p = createGitHubProvider(config, { log: captured.log, now: () => Date.now() + clockOffsetMs });
    providers.push(p);
    return p;
  }

  async function outcome(p: AuthProvider, token: string): Promise<Outcome> {
    return outcomeOf(p, token);
  }

  before(async () => {
    github = await startFakeGitHub({
      [ALICE]: { login: "alice", id: 1, orgs: ["acme", "llama-fans"] },
      [BOB]: { login: "bob", id: 2, orgs: MANY_ORGS },
      [CAROL]: { login: "carol", id: 3, noOrgScope: true },
    });
  });

  after(async () => {
    for (const p of providers) await p.close();
    await github.close();
  });

  test("a valid token becomes its login, with login → roles and organizations → teams by default", async () => {
    assert.deepEqual(await outcome(provider(), ALICE), { principal: "alice", attributes: { roles: ["alice"], teams: ["acme", "llama-fans"] } });
  });

  test("it calls /user then /user/orgs with the token as Bearer and GitHub's media type", async () => {
    github.requests.length = 0;
    await outcome(provider(), ALICE);
    assert.deepEqual(github.requests.map((r) => `${r.method} ${r.path}`), ["GET /user", "GET /user/orgs?per_page=100"]);
    assert.ok(github.requests.every((r) => r.authorization === `Bearer ${ALICE}` && r.accept === "application/vnd.github+json"));
  });

  test("every page of organizations is read by following the Link header", async () => {
    github.requests.length = 0;
    const result = await outcome(provider(), BOB);
    assert.deepEqual((result as { attributes: Record<string, readonly string[]> }).attributes.teams, MANY_ORGS);
    assert.equal(github.requests.filter((r) => r.path.startsWith("/user/orgs")).length, 3);
  });

  test("pagination links to another origin are not followed, so the token never leaves for another host", async () => {
    github.linkOrigin = "http://127.0.0.1:9";
    try {
      const result = await outcome(provider(), BOB);
      assert.equal((result as { attributes: Record<string, readonly string[]> }).attributes.teams!.length, 100);
    } finally {
      github.linkOrigin = undefined;
    }
  });

  test("a token without read:org is accepted with no teams", async () => {
    assert.deepEqual(await outcome(provider(), CAROL), { principal: "carol", attributes: { roles: ["carol"], teams: [] } });
  });

  test("a bad token is refused with 401 and Llama Stack's message", async () => {
    assert.deepEqual(await outcome(provider(), "ghp_not_a_real_token_000000000000000000"), {
      status: 401,
      message: "GitHub token validation failed. Please check your token and try again.",
    });
  });

  test("GitHub's rate limit is a 503, not a bad token", async () => {
    github.rateLimited = true;
    try {
      assert.deepEqual(await outcome(provider(), ALICE), { status: 503, message: "GitHub API rate limit exceeded" });
    } finally {
      github.rateLimited = false;
    }
  });

  test("a GitHub outage (5xx) or an unreachable API is a 503", async () => {
    github.failWith = 502;
    try {
      assert.deepEqual(await outcome(provider(), ALICE), { status: 503, message: "GitHub API unavailable" });
    } finally {
      github.failWith = undefined;
    }
    const p = provider({ github_api_base_url: `http://127.0.0.1:${await closedPort()}` });
    assert.deepEqual(await outcome(p, ALICE), { status: 503, message: "GitHub API unavailable" });
  });

  test("a GitHub Enterprise base URL with /api/v3 is used as given", async () => {
    const ghe = await startFakeGitHub({ [ALICE]: { login: "alice-ghe", id: 7, orgs: ["corp"] } }, "/api/v3");
    try {
      assert.deepEqual(await outcome(provider({ github_api_base_url: ghe.url }), ALICE), {
        principal: "alice-ghe",
        attributes: { roles: ["alice-ghe"], teams: ["corp"] },
      });
      assert.deepEqual(ghe.requests.map((r) => r.path), ["/api/v3/user", "/api/v3/user/orgs?per_page=100"]);
    } finally {
      await ghe.close();
    }
  });

  test("a validated token is reused for cache_ttl_ms, sparing GitHub's rate limit", async () => {
    const p = provider({ cache_ttl_ms: 60_000 });
    github.requests.length = 0;
    for (let i = 0; i < 5; i++) await outcome(p, ALICE);
    assert.equal(github.requests.length, 2);
    clockOffsetMs = 61_000;
    try {
      await outcome(p, ALICE);
      assert.equal(github.requests.length, 4);
    } finally {
      clockOffsetMs = 0;
    }
  });

  test("claims_mapping can map the numeric id too", async () => {
    assert.deepEqual(await outcome(provider({ claims_mapping: { id: "uids" } }), ALICE), { principal: "alice", attributes: { uids: ["1"] } });
  });

  test("the message for a missing token is Llama Stack's", () => {
    assert.equal(provider().authRequiredMessage, "Authentication required. Please provide a valid GitHub access token (https://github.com/settings/tokens) in the Authorization header");
  });

  test("Link headers are parsed as GitHub writes them", () => {
    assert.equal(nextLink('<https://api.github.com/user/orgs?page=2>; rel="next", <https://api.github.com/user/orgs?page=5>; rel="last"'), "https://api.github.com/user/orgs?page=2");
    assert.equal(nextLink('<https://api.github.com/user/orgs?page=1>; rel="prev", <https://api.github.com/user/orgs?page=1>; rel="first"'), undefined);
    assert.equal(nextLink(undefined), undefined);
  });

  test("readiness asks GET /rate_limit (free of GitHub's rate limit) without a token, and says http_502 while GitHub fails", async () => {
    const p = provider();
    const probes = () => github.requests.filter((r) => r.path === "/rate_limit");
    assert.equal(await p.ready!(), undefined);
    assert.deepEqual(probes().map((r) => [r.method, r.authorization]), [["GET", undefined]]);
    github.failWith = 502;
    try {
      await new Promise((r) => setTimeout(r, 2_100));
      assert.equal(await p.ready!(), "http_502");
    } finally {
      github.failWith = undefined;
    }
  });

  test("no token ever appears in the log", () => {
    const text = captured.text();
    // Accepted and refused tokens were logged (where a careless line would carry them), so the search below can find one.
    assert.match(text, /"msg":"GitHub refused the token"/);
    assert.match(text, /"msg":"authenticated"/);
    for (const token of [ALICE, BOB, CAROL]) assert.equal(text.includes(token), false);
  });
});
