import { Transform, type Readable, type TransformCallback } from "node:stream";
import { PayloadTooLargeError } from "../core/errors.js";

/** Request headers that say whether and how big a body comes. */
interface BodyHeaders {
  readonly "content-length"?: string | undefined;
  readonly "transfer-encoding"?: string | undefined;
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

/**
 * Passes `body` through unbuffered, chunk by chunk, and fails the stream with
 * a {@link PayloadTooLargeError} as soon as more than `maxBytes` went
 * through: a chunked body declares no length, so counting is the only check.
 */
export function limitBody(body: Readable, maxBytes: number): Readable {
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      seen += chunk.length;
      if (seen > maxBytes) callback(new PayloadTooLargeError(maxBytes));
      else callback(null, chunk);
    },
  });
  // A client that goes away mid-upload fails the copy, so the upstream request is aborted too.
  body.on("error", (err) => counter.destroy(err));
  body.on("aborted", () => counter.destroy(new Error("client aborted the request body")));
  return body.pipe(counter);
}
