import type { ProviderObserver } from "./types.js";
import { readFileSync } from "node:fs";
import { Agent, request } from "undici";
import type { Logger } from "../log.js";

/**
 * The one way providers call identity services: a connection pool of their
 * own (closed with the provider, no hidden global agent), one deadline per
 * exchange (connect, headers and body), the client's abort signal, a cap on
 * the body read, and TLS settings from `verify_tls` / `tls_cafile`.
 *
 * Failures to get an answer (refused, reset, timed out, cancelled, too large)
 * reject with an {@link OutboundError} whose `kind` the provider maps to its
 * own message — usually a 503, since the credential was never judged.
 */

/** Largest body read from an identity service unless the caller says otherwise. */
export const MAX_RESPONSE_BYTES = 1024 * 1024;

/**
 * How long a readiness answer about an identity service is reused, in ms:
 * "answering now" within two seconds, and however often a load balancer
 * probes /ready (every replica, every second), the service gets at most one
 * probe per replica per two seconds.
 */
export const READY_CACHE_MS = 2_000;

export type OutboundFailure = "timeout" | "unreachable" | "cancelled" | "too_large";

/** The identity service gave no usable answer; `detail` is safe to log (no credential). */
export class OutboundError extends Error {
  readonly kind: OutboundFailure;
  readonly detail: { code?: string; message: string };

  constructor(kind: OutboundFailure, detail: { code?: string; message: string }) {
    super(`${kind}: ${detail.message}`);
    this.name = "OutboundError";
    this.kind = kind;
    this.detail = detail;
  }
}

export interface HttpClientOptions {
  /** Deadline for one whole exchange, in ms. */
  timeoutMs: number;
  /** `false` turns certificate checks off (unless `tlsCafile` is set, as in the reference). */
  verifyTls: boolean;
  /** PEM file of the only CAs to trust. */
  tlsCafile?: string | undefined;
  /** Names the provider in start-up errors (`custom auth provider: cannot read tls_cafile ...`). */
  owner: string;
  /** Told about each exchange (metrics), under `service`'s name. */
  observer?: ProviderObserver | undefined;
  /** The identity service's name for metrics: `jwks`, `introspection`, `custom`, `github`, `kubernetes`. */
  service?: string;
  /** Where a failed readiness probe is logged with its detail (the /ready body gets only a reason word). */
  log?: Logger | undefined;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The body as text; empty when not read (`readBody: false`). */
  body: string;
}

export interface HttpRequestOptions {
  method?: "GET" | "POST";
  headers?: Record<string, string>;
  body?: string;
  /** The client's signal: a caller that went away stops costing us a request. */
  signal?: AbortSignal | undefined;
  /** Largest body read; {@link MAX_RESPONSE_BYTES} by default. */
  maxBytes?: number;
  /** Which statuses' bodies are read; others are drained (up to 64 KiB) and `body` is "". Default: all. */
  readBody?: (status: number) => boolean;
}

export interface HttpClient {
  /** Whether certificates are verified (for a start-up warning). */
  readonly verifiesTls: boolean;
  /**
   * Readiness, "answering now": `undefined` when an exchange got an answer
   * below 500 within {@link READY_CACHE_MS}, or a GET of `url` does now;
   * else a fixed reason word (`timeout`, `unreachable`, `http_503`). One
   * probe per {@link READY_CACHE_MS} at most; concurrent callers share it.
   */
  probe(url: URL | string): Promise<string | undefined>;
  request(url: URL | string, options?: HttpRequestOptions): Promise<HttpResponse>;
  close(): Promise<void>;
}

/** Error codes of a connection the server closed under us (undici's `SocketError`, a reset, a broken pipe). */
const STALE_CONNECTION_CODES = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE"]);

// Bodies we do not use are only drained so the connection can be reused.
const MAX_DRAINED_BYTES = 64 * 1024;

/**
 * Creates a client for one identity service. Throws at creation when
 * `tlsCafile` cannot be read, so a typo fails start-up, not every request.
 *
 * @example
 * const http = createHttpClient({ timeoutMs: 5000, verifyTls: true, owner: "oauth2_token provider" });
 * const res = await http.request("https://idp/jwks", { signal });
 */
export function createHttpClient(options: HttpClientOptions): HttpClient {
  const { timeoutMs, owner } = options;
  const ca = options.tlsCafile === undefined ? undefined : readCaFile(options.tlsCafile, owner);
  const verify = options.verifyTls || ca !== undefined;
  const agent = new Agent({
    connect: { rejectUnauthorized: verify, ...(ca !== undefined ? { ca } : {}) },
    connectTimeout: timeoutMs,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });

  const { observer, service = owner, log } = options;
  /** When the service last gave an answer below 500 (any exchange): it was answering then. */
  let answeredAt = -Infinity;
  let probeAnswer: { at: number; reason: string | undefined } | undefined;
  let probing: Promise<string | undefined> | undefined;

  async function send(url: URL | string, opts: HttpRequestOptions = {}): Promise<HttpResponse> {
    try {
      const res = await exchangeOrRetryGet(url, opts);
      if (res.status < 500) answeredAt = Date.now();
      observer?.identityCall(service, res.status < 500);
      return res;
    } catch (err) {
      if (!(err instanceof OutboundError && err.kind === "cancelled")) observer?.identityCall(service, false);
      throw err;
    }
  }

  /**
   * A pooled keep-alive connection can be closed by the server (its idle
   * timeout) just as we send on it: the request never reached the service.
   * A GET (a JWKS fetch, a readiness probe) is idempotent and is sent once
   * more on a fresh connection, as browsers do (RFC 9110 §9.2.2); a POST,
   * which carries a credential to be judged, never is.
   */
  async function exchangeOrRetryGet(url: URL | string, opts: HttpRequestOptions): Promise<HttpResponse> {
    try {
      return await exchange(url, opts);
    } catch (err) {
      const get = (opts.method ?? "GET") === "GET";
      if (!get || !(err instanceof OutboundError) || err.kind !== "unreachable" || !STALE_CONNECTION_CODES.has(err.detail.code ?? "")) throw err;
      return await exchange(url, opts);
    }
  }

  async function exchange(url: URL | string, opts: HttpRequestOptions): Promise<HttpResponse> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const onClientAbort = () => controller.abort();
    if (opts.signal?.aborted) controller.abort();
    else opts.signal?.addEventListener("abort", onClientAbort, { once: true });

    const failure = (err: unknown): OutboundError => {
      if (err instanceof OutboundError) return err;
      if (opts.signal?.aborted && !timedOut) return new OutboundError("cancelled", describeError(err));
      return new OutboundError(timedOut || isUndiciTimeout(err) ? "timeout" : "unreachable", describeError(err));
    };

    try {
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(url, {
          method: opts.method ?? "GET",
          dispatcher: agent,
          headers: opts.headers ?? {},
          body: opts.body ?? null,
          signal: controller.signal,
        });
      } catch (err) {
        throw failure(err);
      }
      const status = res.statusCode;
      if (opts.readBody && !opts.readBody(status)) {
        await res.body.dump({ limit: MAX_DRAINED_BYTES }).catch(() => undefined);
        return { status, headers: res.headers, body: "" };
      }
      try {
        const body = await readCapped(res.body, contentLength(res.headers["content-length"]), opts.maxBytes ?? MAX_RESPONSE_BYTES);
        return { status, headers: res.headers, body };
      } catch (err) {
        throw failure(err);
      }
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onClientAbort);
    }
  }

  async function probeNow(url: URL | string): Promise<string | undefined> {
    let reason: string | undefined;
    let detail: Record<string, unknown> = {};
    try {
      const res = await send(url, { readBody: () => false });
      // Any answer below 500 (a 405 to a GET of a POST endpoint, a 401) proves the service is up.
      if (res.status >= 500) {
        reason = `http_${res.status}`;
        detail = { status: res.status };
      }
    } catch (err) {
      reason = err instanceof OutboundError ? err.kind : "unreachable";
      detail = { err: err instanceof OutboundError ? err.detail : describeError(err) };
    }
    const previous = probeAnswer?.reason;
    probeAnswer = { at: Date.now(), reason };
    const host = new URL(url).host;
    if (reason !== undefined && reason !== previous) log?.warn({ host, reason, ...detail }, `${service} readiness probe failed`);
    else if (reason === undefined && previous !== undefined) log?.info({ host }, `${service} answers again`);
    return reason;
  }

  return {
    verifiesTls: verify,
    probe(url) {
      const now = Date.now();
      if (now - answeredAt < READY_CACHE_MS) return Promise.resolve(undefined);
      if (probeAnswer && now - probeAnswer.at < READY_CACHE_MS) return Promise.resolve(probeAnswer.reason);
      probing ??= probeNow(url).finally(() => (probing = undefined));
      return probing;
    },
    request: send,
    async close() {
      await agent.close();
    },
  };
}

function readCaFile(file: string, owner: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`${owner}: cannot read tls_cafile ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

function contentLength(value: string | string[] | undefined): number | undefined {
  if (typeof value !== "string" || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

async function readCapped(body: AsyncIterable<Buffer> & { destroy(): void }, declared: number | undefined, max: number): Promise<string> {
  const tooLarge = () => new OutboundError("too_large", { message: `response body over ${max} bytes` });
  if (declared !== undefined && declared > max) {
    body.destroy();
    throw tooLarge();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size).toString("utf8");
}

function isUndiciTimeout(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "UND_ERR_CONNECT_TIMEOUT" || code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT";
}

/** What is safe to log about a transport failure: its code and message, which carry no credential. */
export function describeError(err: unknown): { code?: string; message: string } {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    const cause = (err as { cause?: unknown }).cause;
    const causeCode = cause instanceof Error ? (cause as NodeJS.ErrnoException).code : undefined;
    return { ...((code ?? causeCode) ? { code: code ?? causeCode } : {}), message: err.message };
  }
  return { message: String(err) };
}

/** Parses a configured service URL, refusing anything but http(s), with the owner named. */
export function serviceUrl(text: string, owner: string, key: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`${owner}: ${key} is not a valid URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`${owner}: ${key} must be an http:// or https:// URL`);
  }
  return url;
}

/** Parses a JSON body; undefined when it is not JSON. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** True for a JSON object (not an array, not null). */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
