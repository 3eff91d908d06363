import http from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A stand-in for the GitHub REST API (api.github.com, or GitHub Enterprise's
 * `/api/v3`), speaking its wire format for the two calls the `github_token`
 * provider makes:
 *
 * - `GET /user` → 200 with the authenticated user (`login`, `id`, ...);
 *   401 `{"message": "Bad credentials", "documentation_url": ...}` otherwise.
 * - `GET /user/orgs?per_page=N&page=P` → 200 with an array of organizations
 *   (`login`, `id`, ...) and a `Link` header (`<...>; rel="next", <...>;
 *   rel="last"`) while more pages remain; 403 when the token lacks `read:org`.
 *
 * Every response carries GitHub's `x-ratelimit-*` headers; `rateLimited`
 * answers 403 with `x-ratelimit-remaining: 0`, as GitHub does.
 */

export interface FakeGitHubUser {
  login: string;
  id: number;
  orgs?: string[];
  /** The token lacks `read:org`: /user/orgs answers 403. */
  noOrgScope?: boolean;
}

export interface FakeGitHub {
  /** Base URL to configure as `github_api_base_url` (includes `prefix`). */
  url: string;
  /** Every request received: method, path with query, authorization header. */
  requests: { method: string; path: string; authorization: string | undefined; accept: string | undefined }[];
  users: Record<string, FakeGitHubUser>;
  rateLimited: boolean;
  /** Answer every request with this status (e.g. 502). */
  failWith: number | undefined;
  /** Make `Link` headers point at this origin instead (to test they are not followed). */
  linkOrigin: string | undefined;
  close(): Promise<void>;
}

/** Starts the fake on 127.0.0.1; `prefix` is `/api/v3` for a GitHub Enterprise layout. */
export async function startFakeGitHub(users: Record<string, FakeGitHubUser> = {}, prefix = ""): Promise<FakeGitHub> {
  const state: Omit<FakeGitHub, "close" | "url"> = { requests: [], users, rateLimited: false, failWith: undefined, linkOrigin: undefined };
  let origin = "";
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", origin);
    state.requests.push({ method: req.method ?? "", path: url.pathname + url.search, authorization: req.headers.authorization, accept: req.headers.accept });
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
      res
        .writeHead(status, {
          "content-type": "application/json; charset=utf-8",
          "x-ratelimit-limit": "5000",
          "x-ratelimit-remaining": state.rateLimited ? "0" : "4999",
          "x-ratelimit-reset": String(Math.floor(Date.now() / 1000) + 3600),
          "x-github-media-type": "github.v3; format=json",
          ...headers,
        })
        .end(JSON.stringify(body));
    if (state.failWith !== undefined) return json(state.failWith, { message: "Server Error" });
    if (state.rateLimited) {
      return json(403, { message: "API rate limit exceeded for user ID 1.", documentation_url: "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting" });
    }
    const token = /^(?:Bearer|token) (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    const user = token === undefined ? undefined : state.users[token];
    if (!user) return json(401, { message: "Bad credentials", documentation_url: "https://docs.github.com/rest", status: "401" });
    if (req.method !== "GET") return json(404, { message: "Not Found" });
    if (url.pathname === `${prefix}/user`) {
      return json(200, { login: user.login, id: user.id, node_id: `U_${user.id}`, type: "User", site_admin: false, name: null });
    }
    if (url.pathname === `${prefix}/user/orgs`) {
      if (user.noOrgScope) return json(403, { message: "Resource not accessible by personal access token", documentation_url: "https://docs.github.com/rest/orgs/orgs" });
      const perPage = Math.min(Number(url.searchParams.get("per_page") ?? 30), 100);
      const page = Number(url.searchParams.get("page") ?? 1);
      const all = user.orgs ?? [];
      const lastPage = Math.max(1, Math.ceil(all.length / perPage));
      const items = all.slice((page - 1) * perPage, page * perPage).map((login, i) => ({ login, id: 1000 + i, node_id: `O_${login}`, description: null }));
      const link = (p: number) => `<${state.linkOrigin ?? origin}${prefix}/user/orgs?per_page=${perPage}&page=${p}>`;
      const links: string[] = [];
      if (page < lastPage) links.push(`${link(page + 1)}; rel="next"`, `${link(lastPage)}; rel="last"`);
      if (page > 1) links.push(`${link(1)}; rel="first"`, `${link(page - 1)}; rel="prev"`);
      return json(200, items, links.length > 0 ? { link: links.join(", ") } : {});
    }
    return json(404, { message: "Not Found", documentation_url: "https://docs.github.com/rest" });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(state, {
    url: `${origin}${prefix}`,
    async close() {
      // close() before cutting connections: nothing new slips in between.
      const closed = new Promise((r) => server.close(r));
      server.closeAllConnections();
      await closed;
    },
  }) as FakeGitHub;
}
