import type { IncomingMessage } from "node:http";
import { authorizationHeaders, type PipelineRequest } from "./pipeline.js";
import type { RequestTrace } from "./tracing/trace.js";

/**
 * Turns a `node:http` request into what the pipeline reads. Every
 * `Authorization` header is kept (Node's `req.headers` keeps only the first,
 * so a second credential would otherwise go unseen), and so is every copy of
 * any other repeated header, as a list: identity headers sent twice are then
 * refused rather than merged.
 */
export function toPipelineRequest(req: IncomingMessage, signal?: AbortSignal): PipelineRequest {
  return {
    method: req.method ?? "GET",
    url: req.url ?? "/",
    headers: requestHeaders(req),
    remoteAddress: req.socket.remoteAddress,
    signal,
  };
}

/**
 * {@link toPipelineRequest} with the signal taken from `source` only when a
 * stage asks for it (a provider calling its identity service): a host that
 * makes its AbortController on first use makes none for the many requests
 * that never wait on anything.
 */
export function toLazyPipelineRequest(req: IncomingMessage, source: { readonly signal: AbortSignal; readonly trace?: RequestTrace | undefined }): PipelineRequest {
  return {
    method: req.method ?? "GET",
    url: req.url ?? "/",
    headers: requestHeaders(req),
    remoteAddress: req.socket.remoteAddress,
    get signal() {
      return source.signal;
    },
    trace: source.trace,
  };
}

function requestHeaders(req: IncomingMessage): Record<string, string | string[] | undefined> {
  const headers: Record<string, string | string[] | undefined> = { ...req.headers };
  headers.authorization = authorizationHeaders(req.rawHeaders);
  const raw = req.rawHeaders;
  const seen = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (!seen.has(name)) {
      seen.add(name);
    } else if (name !== "authorization" && name !== "set-cookie") {
      // Node joins some repeats with ", " and drops others; the list keeps them all.
      headers[name] = req.headersDistinct[name];
    }
  }
  return headers;
}
