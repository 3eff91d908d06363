import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import {
  BadRequestError,
  HeadersTooLargeError,
  RequestTimeoutError,
  TollgateError,
  toErrorResponse,
  type ErrorResponse,
} from "../core/errors.js";
import { upstreamFailure } from "./forward.js";

/**
 * The one place the gateway decides what an error looks like on the wire.
 * Tollgate's own errors pass through; errors Node or undici raise about a
 * malformed request or a failed upstream become Tollgate errors with a safe message; everything
 * else is a 500 that reveals nothing (see `toErrorResponse`).
 */
export function gatewayError(err: unknown): unknown {
  if (err instanceof TollgateError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const status = (err as { statusCode?: unknown } | null)?.statusCode;
  switch (code) {
    case "HPE_HEADER_OVERFLOW":
      return new HeadersTooLargeError();
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return new RequestTimeoutError();
  }
  // undici failing on the upstream's response body before anything was sent on.
  if (typeof code === "string" && code.startsWith("UND_ERR_")) return upstreamFailure(err);
  if (typeof code === "string" && code.startsWith("HPE_")) return new BadRequestError("Malformed HTTP request", "malformed_request");
  // Any other client error with a status (a 4xx with its own wording): keep the status, use our words.
  if (typeof status === "number" && status >= 400 && status < 500) {
    return new TollgateError(status, "invalid_request_error", "invalid_request", STATUS_CODES[status] ?? "Bad request");
  }
  return err;
}

/** The envelope for `err`, as {@link toErrorResponse} builds it after {@link gatewayError}. */
export function errorResponse(err: unknown): ErrorResponse {
  return toErrorResponse(gatewayError(err));
}

/**
 * Answers a request Node's HTTP parser refused (`clientError`: headers too
 * large, malformed request line, request timeout) with the envelope, written
 * straight on the socket since there is no request object, then closes the
 * connection. The server itself is unaffected.
 */
export function writeClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) {
    socket.destroy();
    return;
  }
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const { status, headers, body } = errorResponse(err);
  const text = JSON.stringify(body);
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}`];
  for (const [name, value] of Object.entries({ ...headers, "content-length": String(Buffer.byteLength(text)), connection: "close" })) {
    lines.push(`${name}: ${value}`);
  }
  // end() lets the response leave before the socket closes; the timer bounds a
  // peer that never reads it.
  const timer = setTimeout(() => socket.destroy(), 1000);
  timer.unref();
  socket.end(`${lines.join("\r\n")}\r\n\r\n${text}`, () => {
    clearTimeout(timer);
    socket.destroy();
  });
}
