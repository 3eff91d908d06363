import type { IncomingMessage } from "node:http";
import type { Config } from "../core/config/schema.js";
import { MethodNotAllowedError, NotFoundError } from "../core/errors.js";
import { canonicalTarget } from "../core/path.js";
import type { PipelineOptions, PipelineRequest } from "../core/pipeline.js";
import type { AuthProvider } from "../core/providers/types.js";
import type { RecordStore } from "../core/stores/types.js";
import type { User } from "../core/user.js";
import type { Catalog } from "../gateway/catalog.js";
import { CONSOLE_HEADERS, loadConsole, type ConsoleFile } from "./console.js";
import { createAdminGuard } from "./guard.js";
import { readJsonBody } from "./input.js";
import { createKeysApi } from "./keys.js";
import { OPENAPI_DOCUMENT } from "./openapi.js";
import { createPolicyChecker } from "./policy-check.js";
import { redactConfig } from "./redact.js";
import { usageAnswer } from "./usage.js";

/** What the admin API answers; the host (the gateway) writes it. */
export interface AdminAnswer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** JSON to serialise, or a file's bytes. */
  readonly body: unknown;
  /** The admin who called, for the request log. */
  readonly user?: User | undefined;
}

/** What one admin request is: the pipeline's view of it, its body stream, and its canonical path and query. */
export interface AdminRequest extends PipelineRequest {
  readonly raw: IncomingMessage;
  readonly path: string;
  readonly query: string;
}

export interface AdminDeps {
  readonly config: Config;
  readonly provider: AuthProvider | undefined;
  /** The record store: keys, owners, usage. */
  readonly store: RecordStore | undefined;
  /** The routes this generation declares (the route form of policy/check). */
  readonly catalog: Catalog;
  readonly onProviderError?: PipelineOptions["onProviderError"];
  readonly onAuthenticated?: PipelineOptions["onAuthenticated"];
  readonly now?: (() => number) | undefined;
}

export interface AdminApi {
  /** Answers a request for a reserved path ({@link reservedPath}); throws a TollgateError for refusals. */
  handle(request: AdminRequest): Promise<AdminAnswer>;
}

const JSON_HEADERS = Object.freeze({ "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });

/**
 * Is this (canonical) path one of the admin API's or the console's? They are
 * reserved: never forwarded, whatever the catalog says. Compared lower-case,
 * as routes are (routes.ts), so `/ADMIN/v1/keys` is not a way upstream.
 */
export function isReservedPath(path: string): boolean {
  const p = path.toLowerCase();
  return p === "/admin" || p.startsWith("/admin/") || p === "/console" || p.startsWith("/console/");
}

/**
 * The canonical path and query of a request for a reserved path, or
 * undefined for any other (and for a path that cannot be made canonical:
 * the pipeline refuses it). Cheap for the requests it is not about: a path
 * can only be reserved when it spells `admin` or `console`, or encodes
 * letters with `%`.
 */
export function reservedTarget(url: string | undefined): { path: string; query: string } | undefined {
  if (url === undefined || !MAYBE_RESERVED.test(url)) return undefined;
  try {
    const target = canonicalTarget(url);
    return isReservedPath(target.path) ? target : undefined;
  } catch {
    return undefined;
  }
}

const MAYBE_RESERVED = /^[^?]*(admin|console|%)/i;

/**
 * The admin API of one config generation (`/admin/v1/...`, DESIGN.md
 * "Admin API and console") and the console's files (`/console/`).
 */
export function createAdminApi(deps: AdminDeps): AdminApi {
  const { config, store, now = Date.now } = deps;
  const guard = createAdminGuard({ provider: deps.provider, when: config.server.admin.when, onProviderError: deps.onProviderError, onAuthenticated: deps.onAuthenticated });
  const keys = createKeysApi(store, now);
  const policy = createPolicyChecker(config, { catalog: deps.catalog, store });
  const shownConfig = redactConfig(config);
  const consoleFiles = loadConsole();

  function json(status: number, body: unknown, user?: User): AdminAnswer {
    return { status, headers: JSON_HEADERS, body, user };
  }

  async function admin(request: AdminRequest, segments: readonly string[]): Promise<AdminAnswer> {
    const method = request.method === "HEAD" ? "GET" : request.method;
    // The document describes the API and holds nothing secret: tools may read it without a key.
    if (segments.length === 1 && segments[0] === "openapi.json") {
      if (method !== "GET") throw new MethodNotAllowedError(request.method);
      return json(200, OPENAPI_DOCUMENT);
    }
    const user = await guard.admit(request);
    const query = new URLSearchParams(request.query);
    const [first, id, action, ...rest] = segments;
    const allow = (...methods: string[]) => {
      if (!methods.includes(method)) throw new MethodNotAllowedError(request.method);
    };
    if (first === "keys" && rest.length === 0) {
      if (id === undefined) {
        allow("GET", "POST");
        return method === "POST" ? json(201, await keys.create(await readJsonBody(request.raw)), user) : json(200, await keys.list(query), user);
      }
      if (action === undefined) {
        allow("GET", "DELETE");
        return method === "DELETE" ? json(200, await keys.revoke(id), user) : json(200, await keys.get(id), user);
      }
      if (action === "rotate") {
        allow("POST");
        return json(200, await keys.rotate(id, await readJsonBody(request.raw)), user);
      }
    }
    if (first === "usage" && id === undefined) {
      allow("GET");
      return json(200, await usageAnswer(store, query, now()), user);
    }
    if (first === "policy" && id === "check" && action === undefined) {
      allow("POST");
      return json(200, await policy.check(await readJsonBody(request.raw)), user);
    }
    if (first === "config" && id === undefined) {
      allow("GET");
      return json(200, shownConfig, user);
    }
    throw new NotFoundError("No such admin endpoint", "not_found");
  }

  function consoleFile(request: AdminRequest, name: string): AdminAnswer {
    if (request.method !== "GET" && request.method !== "HEAD") throw new MethodNotAllowedError(request.method);
    const file: ConsoleFile | undefined = consoleFiles.get(name === "" ? "index.html" : name);
    if (!file) throw new NotFoundError(consoleFiles.size === 0 ? "The console's files are missing from this installation" : "Not found");
    return { status: 200, headers: { ...CONSOLE_HEADERS, "content-type": file.type }, body: file.body };
  }

  return {
    async handle(request) {
      const segments = request.path.split("/").filter(Boolean);
      const top = segments[0]!.toLowerCase();
      if (top === "console") {
        // A relative link in the page (app.js) needs the trailing slash.
        // The canonical path has no trailing slash: the one the client sent tells /console from /console/.
        if (segments.length === 1 && !request.url.split("?")[0]!.endsWith("/")) return { status: 301, headers: { location: `/console/${request.query ? `?${request.query}` : ""}` }, body: "" };
        if (segments.length > 2) throw new NotFoundError();
        return consoleFile(request, segments[1] ?? "");
      }
      if (segments[1]?.toLowerCase() !== "v1") {
        await guard.admit(request);
        throw new NotFoundError("No such admin endpoint", "not_found");
      }
      return admin(request, segments.slice(2));
    },
  };
}
