import { readFileSync } from "node:fs";
import type { Readable } from "node:stream";
import { Agent, type Dispatcher } from "undici";
import type { UpstreamConfig } from "../core/config/schema.js";
import { TollgateError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";

/** One request to send upstream; headers already filtered (see `upstreamRequestHeaders`). */
export interface UpstreamRequest {
  readonly method: string;
  /** Canonical path, as the pipeline checked it (`/v1/models`). */
  readonly path: string;
  /** Raw query string without `?` ("" for none). */
  readonly query: string;
  /** Flat `[name, value, ...]` list. */
  readonly headers: readonly string[];
  /** A stream, sent as it arrives; bytes the gateway read whole (request-body.ts), sent with the head; null for no body. */
  readonly body: Readable | Buffer | null;
  /** Aborted when the client goes away: the upstream request is cancelled with it. */
  readonly signal: AbortSignal;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  /** The body, streamed; destroy it to abort the upstream request. */
  readonly body: Readable;
}

/** Sends requests to `upstream.url` over one keep-alive connection pool. */
/**
 * Drops an upstream answer's body unread. undici's body reports a destroy
 * before its end as an `error` event, which would end the process were
 * nobody listening: the listener is added first.
 */
export function discardBody(body: UpstreamResponse["body"]): void {
  body.on("error", () => undefined);
  body.destroy();
}

export interface Forwarder {
  /**
   * Sends the request and resolves once the upstream's response headers
   * arrive. Rejects with {@link UpstreamError} (502: refused, reset, DNS,
   * connect timeout), {@link UpstreamTimeoutError} (504: no response headers
   * within `upstream.response_timeout_ms`), the {@link TollgateError} that
   * failed the request body (413), or the abort reason when the client left.
   */
  forward(request: UpstreamRequest): Promise<UpstreamResponse>;
  /** Closes the pool: waits for requests still running, then closes idle connections. */
  close(): Promise<void>;
}

/**
 * Turns what undici rejected with into the error the client sees. The
 * upstream's own message never reaches the client (it can name internal
 * hosts); `cause` keeps it for the log.
 */
export function upstreamFailure(err: unknown): TollgateError {
  if (err instanceof TollgateError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  // Refused, reset, DNS failure, connect timeout, garbage on the wire: all 502.
  const failure =
    code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" ? new UpstreamTimeoutError() : new UpstreamError();
  return Object.assign(failure, { cause: err });
}

/** The path sent upstream: the base path of `upstream.url` joined to the canonical path. */
export function upstreamPath(basePath: string, path: string, query: string): string {
  const base = basePath.replace(/\/+$/, "");
  return `${base}${path}${query === "" ? "" : `?${query}`}`;
}

/** The settings of one upstream a forwarder needs. */
export type ForwarderSettings = Pick<UpstreamConfig, "url" | "connect_timeout_ms" | "response_timeout_ms" | "idle_timeout_ms"> &
  Partial<Pick<UpstreamConfig, "verify_tls" | "tls_cafile">>;

/**
 * Creates the forwarder for `upstream` (see {@link Forwarder}). Timeouts come
 * from the config: `connect_timeout_ms` (TCP/TLS connect, then 502),
 * `response_timeout_ms` (response headers, then 504), `idle_timeout_ms`
 * (silence within a response body, then the body is cut). For an https://
 * upstream, `tls_cafile` names the CAs trusted (instead of the system's) and `verify_tls: false`
 * turns verification off. Throws (naming the key) when `tls_cafile` cannot be read.
 *
 * @example
 * const forwarder = createForwarder(upstreamsOf(config)[0]);
 * const res = await forwarder.forward({ method: "GET", path: "/v1/models", query: "", headers: [], body: null, signal });
 */
export function createForwarder(upstream: ForwarderSettings): Forwarder {
  const url = new URL(upstream.url);
  const origin = url.origin;
  const basePath = url.pathname;
  let ca: Buffer | undefined;
  if (upstream.tls_cafile !== undefined) {
    try {
      ca = readFileSync(upstream.tls_cafile);
    } catch (err) {
      throw new Error(`tls_cafile: cannot read ${upstream.tls_cafile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  const agent = new Agent({
    connectTimeout: upstream.connect_timeout_ms,
    headersTimeout: upstream.response_timeout_ms,
    bodyTimeout: upstream.idle_timeout_ms,
    ...(ca !== undefined || upstream.verify_tls === false ? { connect: { ...(ca !== undefined ? { ca } : {}), rejectUnauthorized: upstream.verify_tls !== false } } : {}),
  });

  return {
    async forward({ method, path, query, headers, body, signal }) {
      try {
        const res = await agent.request({
          origin,
          path: upstreamPath(basePath, path, query),
          method: method as Dispatcher.HttpMethod,
          headers: headers as string[],
          body,
          signal,
        });
        return { status: res.statusCode, headers: res.headers, body: res.body };
      } catch (err) {
        if (signal.aborted) throw signal.reason ?? err;
        // A request body that failed with a TollgateError (413) is passed through as it is.
        throw upstreamFailure(err);
      }
    },
    async close() {
      await agent.close();
    },
  };
}
