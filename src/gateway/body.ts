import type { Socket } from "node:net";
import { Transform, type Readable, type TransformCallback } from "node:stream";
import { PayloadTooLargeError, RequestTimeoutError } from "../core/errors.js";

/** Request headers that say whether and how big a body comes. */
interface BodyHeaders {
  readonly "content-length"?: string | undefined;
  readonly "transfer-encoding"?: string | undefined;
}

/** How much of a request body the gateway takes, and how long it waits for it. */
export interface BodyLimits {
  /** `server.max_body_bytes`: more is a 413. */
  readonly maxBytes: number;
  /** `server.body_idle_timeout_ms`: no byte for this long while the gateway waits for one is a 408. */
  readonly idleMs: number;
  /**
   * Takes `bytes` more of the gateway's buffer budget for this request
   * (buffer-budget.ts), throwing `OverloadedError` (503) when it is spent.
   * Only bodies the gateway holds whole ask; streamed bodies hold nothing.
   */
  readonly reserve?: ((bytes: number) => void) | undefined;
}

/** True when the request carries a body (declared length above 0, or chunked). */
export function hasBody(headers: BodyHeaders): boolean {
  if (headers["transfer-encoding"] !== undefined) return true;
  const length = headers["content-length"];
  return length !== undefined && length !== "0";
}

/**
 * Refuses a body whose declared `Content-Length` exceeds `maxBytes`, before a
 * byte of it is read. (Node's parser has already refused malformed lengths.)
 */
export function checkDeclaredLength(headers: BodyHeaders, maxBytes: number): void {
  const length = headers["content-length"];
  if (length !== undefined && Number(length) > maxBytes) throw new PayloadTooLargeError(maxBytes);
}

/** Watches a request body for silence; see {@link watchIdle}. */
export interface IdleWatch {
  /** A byte arrived. */
  touch(): void;
  /** The body ended or is no longer read. */
  stop(): void;
}

/**
 * Calls `onIdle` once when `body` sends nothing for `idleMs` while the
 * gateway is waiting for it — nginx's `client_body_timeout` (between two
 * reads, not for the whole body). Time the gateway itself spends not reading
 * (the upstream applying backpressure, the body paused) does not count:
 * then the client is not the one late.
 */
export function watchIdle(body: Readable, idleMs: number, onIdle: () => void): IdleWatch {
  let last = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const check = () => {
    const now = Date.now();
    // Paused by a pipe's backpressure, or bytes waiting to be read: the wait is ours.
    if (body.readableFlowing === false || body.readableLength > 0) last = now;
    const left = last + idleMs - now;
    if (left > 0) {
      timer = setTimeout(check, left);
      timer.unref();
      return;
    }
    timer = undefined;
    onIdle();
  };
  timer = setTimeout(check, idleMs);
  timer.unref();
  return {
    touch() {
      last = Date.now();
    },
    stop() {
      clearTimeout(timer);
      timer = undefined;
    },
  };
}

/**
 * Passes `body` through unbuffered, chunk by chunk, and fails the stream with
 * a {@link PayloadTooLargeError} as soon as more than `maxBytes` went
 * through (a chunked body declares no length, so counting is the only
 * check), or with a {@link RequestTimeoutError} when the client sends
 * nothing for `idleMs`. Either failure aborts the upstream request; the
 * client's connection stays open for the error response.
 */
export function limitBody(body: Readable, limits: Pick<BodyLimits, "maxBytes" | "idleMs">): Readable {
  const { maxBytes } = limits;
  let seen = 0;
  const idle = watchIdle(body, limits.idleMs, () => counter.destroy(new RequestTimeoutError()));
  const counter = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      idle.touch();
      seen += chunk.length;
      if (seen > maxBytes) callback(new PayloadTooLargeError(maxBytes));
      else callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      idle.stop();
      callback();
    },
  });
  counter.once("close", () => {
    idle.stop();
    // What the client still sends is not wanted: drained, so that the error response can be read.
    body.unpipe(counter);
  });
  // A client that goes away mid-upload fails the copy, so the upstream request is aborted too.
  body.on("error", (err) => counter.destroy(err));
  body.on("aborted", () => counter.destroy(new Error("client aborted the request body")));
  return body.pipe(counter);
}

/** How long a connection closed after a refused body keeps draining it; nginx's `lingering_timeout` and `lingering_time`. */
const LINGER_IDLE_MS = 5_000;
const LINGER_TOTAL_MS = 30_000;

/**
 * Closes `socket` after the response now being written on it without losing
 * that response. A client still sending a body the gateway refused (413,
 * 408, 503) would otherwise see a TCP reset: closing a socket with unread
 * bytes makes the kernel send RST, and the client's stack may then drop the
 * response it had not read yet. So, as nginx's lingering close does: send
 * FIN after the response, read and discard what still comes, and close when
 * the client closes, after 5 s without a byte, or after 30 s in all.
 *
 * Node closes a `Connection: close` response's socket with `destroySoon()`
 * (end, then destroy once written): this replaces that call for this socket.
 */
export function lingerAfterResponse(body: Readable, socket: Socket): void {
  // The parser keeps feeding the request: its bytes are dropped, never buffered.
  body.resume();
  socket.destroySoon = () => {
    const close = () => {
      clearTimeout(total);
      socket.destroy();
    };
    const total = setTimeout(close, LINGER_TOTAL_MS);
    total.unref();
    socket.setTimeout(LINGER_IDLE_MS, close);
    socket.once("end", close);
    socket.once("close", () => clearTimeout(total));
    socket.end();
  };
}
