import { Readable } from "node:stream";
import { BadRequestError, PayloadTooLargeError } from "../core/errors.js";

/**
 * Buffering a request body the gateway must look into, and forwarding what it
 * read (or a rewritten version of it). Shared by the resource policy (reads
 * `model`, issue 5) and quotas (injects `stream_options.include_usage`,
 * issue 6); every other body is streamed through untouched (body.ts).
 *
 * Typical use, in the route handler, before forwarding:
 *
 * ```ts
 * const body = await readJsonBody(request.raw, config.server.max_body_bytes);   // 413 beyond the limit
 * const model = typeof body.json === "object" && body.json !== null ? (body.json as { model?: unknown }).model : undefined;
 * // ...policy check on `model`...
 * // Quotas: rewrite, then forward the re-serialised body:
 * const rewritten = rewriteJsonBody(body, (json) => ({ ...json, stream_options: { ...json.stream_options, include_usage: true } }));
 * forward({ ..., headers: withBodyLength(headers, rewritten.bytes.length), body: bodyStream(rewritten) });
 * ```
 *
 * Several stages share one {@link BufferedBody}: read it once, let each stage
 * rewrite it in turn, forward the last version. In the gateway, stage 6
 * (resources.ts) reads it first when the catalog needs `model` and hands it
 * over as `GuardedRequest.body`; a later stage takes that one (or reads the
 * body itself when it is undefined: the stream is then still unread) and
 * passes its rewrite on; `forward()` in server.ts sends the `body` of the
 * `GuardedRequest` it is given, with {@link withBodyLength} and
 * {@link bodyStream}. A body never rewritten is forwarded byte for byte as the
 * client sent it.
 */

/** A request body read whole. */
export interface BufferedBody {
  /** The bytes to forward (the client's, or the last rewrite's). */
  readonly bytes: Buffer;
  /**
   * The parsed JSON; `undefined` when the body is not JSON (wrong
   * Content-Type, or invalid JSON: forwarded as is, the upstream answers 400).
   */
  readonly json: unknown;
  /** The request's Content-Type (lower-case, without parameters; "" when absent). */
  readonly contentType: string;
}

/** The media type of a Content-Type header, lower-case, without parameters. */
export function mediaType(contentType: string | undefined): string {
  return (contentType ?? "").split(";")[0]!.trim().toLowerCase();
}

/**
 * Reads the whole body of `raw` (at most `limit` bytes, else a
 * {@link PayloadTooLargeError}, 413) and parses it when its Content-Type is
 * JSON (`application/json`, `*+json`) or absent.
 *
 * @example const { json, bytes } = await readJsonBody(request.raw, 1_048_576);
 */
export async function readJsonBody(raw: Readable & { headers?: Record<string, string | string[] | undefined> }, limit: number): Promise<BufferedBody> {
  const contentType = mediaType(typeof raw.headers?.["content-type"] === "string" ? raw.headers["content-type"] : undefined);
  // Listeners rather than `for await`: the async iterator costs an object
  // graph and a promise per chunk, measurable on every inference request.
  const bytes = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        raw.destroy();
        reject(new PayloadTooLargeError(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onClose = () => {
      cleanup();
      reject(new Error("request body closed before its end"));
    };
    function cleanup() {
      raw.off("data", onData);
      raw.off("end", onEnd);
      raw.off("error", onError);
      raw.off("close", onClose);
    }
    raw.on("data", onData);
    raw.on("end", onEnd);
    raw.on("error", onError);
    raw.on("close", onClose);
    if (raw.readableEnded) onEnd();
  });
  const size = bytes.length;
  const isJson = contentType === "" || contentType === "application/json" || contentType.endsWith("+json");
  let json: unknown;
  if (isJson && size > 0) {
    try {
      json = JSON.parse(bytes.toString("utf8"));
    } catch {
      json = undefined;
    }
  }
  return { bytes, json, contentType };
}

/**
 * A new {@link BufferedBody} whose JSON is `rewrite(json)`, re-serialised.
 * `rewrite` gets the current JSON (an object: bodies that are not a JSON
 * object are returned unchanged) and returns the new one; it may mutate and
 * return its argument.
 */
export function rewriteJsonBody(body: BufferedBody, rewrite: (json: Record<string, unknown>) => Record<string, unknown>): BufferedBody {
  if (typeof body.json !== "object" || body.json === null || Array.isArray(body.json)) return body;
  const json = rewrite(body.json as Record<string, unknown>);
  return { bytes: Buffer.from(JSON.stringify(json), "utf8"), json, contentType: body.contentType || "application/json" };
}

/** A string field of a multipart/form-data body (the `model` of audio and image uploads); undefined when absent. */
export async function formField(body: BufferedBody, contentTypeHeader: string, name: string): Promise<string | undefined> {
  if (body.contentType !== "multipart/form-data") return undefined;
  let form: FormData;
  try {
    form = await new Response(body.bytes, { headers: { "content-type": contentTypeHeader } }).formData();
  } catch {
    throw new BadRequestError("Invalid multipart/form-data body", "invalid_body");
  }
  const values = form.getAll(name);
  // Two `model` fields: the upstream may read either; refuse rather than guess.
  if (values.length > 1) throw new BadRequestError(`Duplicate form field: ${name}`, "invalid_body");
  return typeof values[0] === "string" ? values[0] : undefined;
}

/** Streams made by {@link bodyStream}, with their bytes: the forwarder sends those directly. */
const bufferedStreams = new WeakMap<Readable, Buffer>();

/**
 * The body as a stream for the forwarder. The forwarder recognises it
 * ({@link bufferedBytes}) and hands undici the bytes instead: a buffer is
 * written with the request head in one go, a stream chunk by chunk.
 */
export function bodyStream(body: BufferedBody): Readable {
  const stream = Readable.from([body.bytes], { objectMode: false });
  bufferedStreams.set(stream, body.bytes);
  return stream;
}

/** The bytes behind a stream made by {@link bodyStream} (not yet read from); undefined for any other stream. */
export function bufferedBytes(stream: Readable): Buffer | undefined {
  const bytes = bufferedStreams.get(stream);
  return bytes !== undefined && stream.readableDidRead === false ? bytes : undefined;
}

/**
 * Upstream request headers (flat `[name, value, ...]`) for a body of `length`
 * bytes: `Content-Length` set to it, `Transfer-Encoding` dropped (the body is
 * no longer chunked as the client sent it).
 */
export function withBodyLength(headers: readonly string[], length: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    const lower = headers[i]!.toLowerCase();
    if (lower === "content-length" || lower === "transfer-encoding") continue;
    out.push(headers[i]!, headers[i + 1]!);
  }
  out.push("content-length", String(length));
  return out;
}
