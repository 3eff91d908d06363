import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { routeMatchPath } from "../../src/core/policy/routes.js";
import { CATALOG_PRESETS, createCatalog, PRESET_NAMES, type Catalog, type CatalogEntry, type PresetName } from "../../src/gateway/catalog.js";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { assertForwarded, assertNotForwarded, newTag, requestLog, type RecordingUpstream } from "../support/forwarded.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";

// Only declared routes are forwarded (DESIGN.md "Routes: only what is
// declared is forwarded"; issue 14). A real gateway process per preset, in
// front of an upstream that records every request it gets: each request
// below carries its own tag (forwarded.ts), so "never reached the upstream"
// is read off what the upstream saw, and a check that let one through fails.

const TOKEN = "tok-mallory-R2d7q";
/** Mallory may read one model and nothing else: every check on anything else is a refusal. */
const POLICY = { access_policy: [{ permit: { actions: ["read"], resource: "model::allowed-model" } }] };

/** A plain upstream: answers every request 200 with an empty list (of every shape) and records each. */
async function startRecorder(): Promise<RecordingUpstream & { url: string; close(): Promise<void> }> {
  const seen = requestLog();
  const server = http.createServer((req, res) => {
    seen.record(req);
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ object: "list", data: [], models: [] }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests: seen.requests,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

interface Sent {
  readonly status: number;
  readonly code: string | undefined;
  readonly requestId: string;
}

/** Sends `method path` byte for byte (no client-side normalisation), tagged with a new X-Request-Id. */
function send(base: string, method: string, path: string, body?: string, credentials = true): Promise<Sent> {
  const url = new URL(base);
  const { tag: requestId, headers } = newTag();
  if (credentials) headers.authorization = `Bearer ${TOKEN}`;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = String(Buffer.byteLength(body));
  }
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers, agent }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => {
        let code: string | undefined;
        try {
          code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
        } catch {
          code = undefined;
        }
        resolve({ status: res.statusCode ?? 0, code, requestId });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** A concrete path for an entry's template: `{id}` → `x1`, `{id+}` → `org/x1`, a trailing `/*` dropped. */
function instantiate(template: string): string {
  return template.replace(/\/\*$/, "").replace("{id+}", "org/x1").replace("{id}", "x1");
}

/** A JSON body naming a forbidden resource in every field any entry reads. */
function bodyFor(entry: CatalogEntry): string {
  const fields: Record<string, string> = {};
  const spec = entry.id ?? "";
  if (spec.startsWith("body.")) for (const name of spec.slice(5).split("|")) fields[name] = "forbidden-x";
  for (const read of entry.reads ?? []) fields[read.field] = "forbidden-x";
  return JSON.stringify({ ...fields, store: true, messages: [] });
}

/** The same route, spelled otherwise: each must be decided exactly as the plain path. */
function respellings(path: string): string[] {
  const segments = path.split("/").filter(Boolean);
  if (segments.length === 0) return ["//", "/./", "/x/.."];
  const [first, ...rest] = segments;
  const tail = rest.length > 0 ? `/${rest.join("/")}` : "";
  const encodedFirst = first!.replace(/^[a-z]/, (c) => `%${c.charCodeAt(0).toString(16)}`);
  return [
    `/${first}/${tail}`,
    `${path}/`,
    `/${first!.toUpperCase()}${tail}`,
    `/${first}/x/..${tail}`,
    `/${first}/%2e%2e/${first}${tail}`,
    `/${encodedFirst}${tail}`,
  ];
}

/** `;` anywhere (raw or encoded, Tomcat's `..;/`) and an encoded `/`: refused with 400 before anything else. */
function refusedSpellings(path: string): string[] {
  const base = path === "/" ? "" : path;
  return [`${base}/..;/`, `${base};x=1`, `${base}%3B`, `${base}%3bjsessionid=1`, `/v1/models/..;${base}`, `${base}%2Fx`];
}

/** Llama Stack's registries: a denied action other than a read is a 403; on anything store-backed it is the 404 of a missing resource. */
const REGISTRY_TYPES = new Set(["model", "vector_store", "vector_db", "shield", "tool_group", "dataset", "benchmark", "scoring_function"]);

function expectedFor(entry: CatalogEntry): { status: number; forwarded: boolean } {
  switch (entry.action) {
    case "list":
    case "forward":
      return { status: 200, forwarded: true };
    case "read":
      return { status: 404, forwarded: false };
    case "create": {
      // A create names its resource only when the request holds the id (a pulled model, a blob's digest).
      const named = entry.id === "path" || (entry.id ?? "").startsWith("body.");
      return { status: named && !REGISTRY_TYPES.has(entry.type) ? 404 : 403, forwarded: false };
    }
    default:
      return { status: REGISTRY_TYPES.has(entry.type) ? 403 : 404, forwarded: false };
  }
}

describe("only declared routes are forwarded", { timeout: 300_000 }, () => {
  let upstream: Awaited<ReturnType<typeof startRecorder>>;
  let auth: CustomAuthServer;

  before(async () => {
    upstream = await startRecorder();
    auth = await startCustomAuth({ users: { [TOKEN]: { principal: "mallory", attributes: { roles: ["user"] } } } });
  });

  after(async () => {
    agent.destroy();
    await auth?.close();
    await upstream?.close();
  });

  const config = (resources: Record<string, unknown>, server: Record<string, unknown> = {}) => ({
    server: { auth: { provider_config: { type: "custom", endpoint: auth.url }, ...POLICY }, resources, ...server },
    upstream: { url: upstream.url },
  });

  for (const preset of PRESET_NAMES) {
    test(`${preset}: every route, respelled, is decided as itself; ';', encoded '/', unlisted neighbours and undeclared methods never reach the upstream`, { timeout: 120_000 }, async () => {
      const gateway = await startGateway({ config: config({ presets: [preset] }) });
      try {
        await checkPreset(gateway, preset);
      } finally {
        await gateway.close();
      }
    });
  }

  async function checkPreset(gateway: GatewayProcess, preset: PresetName): Promise<void> {
    const catalog = createCatalog({ presets: [preset], routes: [] });
    const failures: string[] = [];
    const mustNotReach: Sent[] = [];
    const mustReach: [Sent, string][] = [];
    const done = new Set<string>();
    for (const declared of CATALOG_PRESETS[preset]) {
      const path = instantiate(declared.path);
      const key = `${declared.method} ${path}`;
      if (done.has(key)) continue;
      done.add(key);
      // The entry that decides this method and path (an earlier, more specific one may).
      const entry = catalog.match(declared.method, routeMatchPath(path), path)!.entry;
      const expected = expectedFor(entry);
      const body = declared.method === "GET" ? undefined : bodyFor(entry);
      const results = await Promise.all([path, ...respellings(path)].map(async (p) => [p, await send(gateway.url, declared.method, p, body)] as const));
      for (const [p, sent] of results) {
        if (sent.status !== expected.status) failures.push(`${declared.method} ${p}: ${sent.status} ${sent.code ?? ""}, expected ${expected.status}`);
        // GET /health and /version are answered by the gateway itself (any spelling it canonicalises to them).
        const own = declared.method === "GET" && (path === "/health" || path === "/version");
        if (!expected.forwarded) mustNotReach.push(sent);
        else if (!own) mustReach.push([sent, `${declared.method} ${p}`]);
      }
      for (const p of refusedSpellings(path)) {
        const sent = await send(gateway.url, declared.method, p, body);
        if (sent.status !== 400) failures.push(`${declared.method} ${p}: ${sent.status} ${sent.code ?? ""}, expected 400`);
        mustNotReach.push(sent);
      }
      for (const [method, p] of unlistedNeighbours(catalog, declared.method, path)) {
        const sent = await send(gateway.url, method, p, method === "GET" ? undefined : body);
        if (sent.status !== 404 || sent.code !== "route_not_found") failures.push(`${method} ${p}: ${sent.status} ${sent.code ?? ""}, expected 404 route_not_found`);
        mustNotReach.push(sent);
      }
    }
    assert.ok(done.size > 5, `the ${preset} preset declares routes`);
    assert.deepEqual(failures, []);
    // Sanity of the recorder: what passed did reach it (else "never reached" below would prove nothing).
    for (const [sent] of mustReach) await assertForwarded(upstream, sent.requestId);
    await assertNotForwarded(upstream, mustNotReach.map((s) => s.requestId));
  }

  /** Paths and methods next to a declared route that no entry declares. */
  function unlistedNeighbours(catalog: Catalog, method: string, path: string): [string, string][] {
    const segments = path.split("/").filter(Boolean);
    const out: [string, string][] = [];
    const neighbour = segments.length === 0 ? "/_undeclared" : `/${segments[0]}_undeclared/${segments.slice(1).join("/")}`.replace(/\/$/, "");
    if (!catalog.match(method, routeMatchPath(neighbour), neighbour)) out.push([method, neighbour]);
    const declared = catalog.methods(routeMatchPath(path));
    const other = ["GET", "POST", "PUT", "PATCH", "DELETE"].find((m) => !declared.includes(m));
    if (other) out.push([other, path]);
    return out;
  }

  test("without credentials an unlisted route is a 401 first; with them a 404 route_not_found; neither is forwarded", { timeout: 60_000 }, async () => {
    const gateway = await startGateway({ config: config({}) });
    try {
      // vLLM's /reset_prefix_cache is an admin endpoint no preset declares.
      const anonymous = await send(gateway.url, "POST", "/reset_prefix_cache", "{}", false);
      assert.equal(anonymous.status, 401);
      const known = await send(gateway.url, "POST", "/reset_prefix_cache", "{}");
      assert.deepEqual([known.status, known.code], [404, "route_not_found"]);
      await assertNotForwarded(upstream, [anonymous.requestId, known.requestId]);
      // The gateway's own endpoints and public paths keep working.
      for (const path of ["/health", "/version", "/ready", "/metrics"]) assert.equal((await send(gateway.url, "GET", path, undefined, false)).status, 200, path);
      const pub = await send(gateway.url, "GET", "/v1/health", undefined, false);
      assert.equal(pub.status, 200);
      await assertForwarded(upstream, pub.requestId);
    } finally {
      await gateway.close();
    }
  });

  test("unlisted: allow forwards a route no catalog entry declares, unchecked", { timeout: 60_000 }, async () => {
    const gateway = await startGateway({ config: config({ unlisted: "allow" }) });
    try {
      const sent = await send(gateway.url, "POST", "/reset_prefix_cache", "{}");
      assert.equal(sent.status, 200);
      assert.deepEqual((await assertForwarded(upstream, sent.requestId)).map((r) => `${r.method} ${r.path}`), ["POST /reset_prefix_cache"]);
    } finally {
      await gateway.close();
    }
  });

  test("OPTIONS is answered by the gateway: 204 with the route's methods in Allow, never forwarded", { timeout: 60_000 }, async () => {
    const gateway = await startGateway({ config: config({}) });
    try {
      const url = new URL(gateway.url);
      const options = (path: string) =>
        new Promise<{ status: number; allow: string | undefined; requestId: string }>((resolve, reject) => {
          const { tag: requestId, headers } = newTag();
          const req = http.request({ host: url.hostname, port: url.port, method: "OPTIONS", path, agent, headers: { ...headers, authorization: `Bearer ${TOKEN}` } }, (res) => {
            res.resume();
            res.on("end", () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, requestId }));
          });
          req.on("error", reject);
          req.end();
        });
      const files = await options("/v1/files/file-1");
      assert.equal(files.status, 204);
      assert.equal(files.allow, "DELETE, GET, HEAD, PATCH, POST, PUT, OPTIONS");
      const chat = await options("/v1/chat/completions");
      assert.deepEqual([chat.status, chat.allow], [204, "GET, HEAD, POST, OPTIONS"]);
      const unlisted = await options("/reset_prefix_cache");
      assert.equal(unlisted.status, 404);
      await assertNotForwarded(upstream, [files, chat, unlisted].map((r) => r.requestId));
    } finally {
      await gateway.close();
    }
  });

  test("an upstream.url ending in /v1 is refused at start-up, naming the key and the reason", { timeout: 60_000 }, async () => {
    await assert.rejects(
      startGateway({ config: { upstream: { url: `${upstream.url}/v1` } }, readyTimeoutMs: 15_000 }),
      (err: Error) => /upstream\.url: must not end in \/v1: clients already send \/v1\/\.\.\. paths/.test(err.message),
    );
  });
});
