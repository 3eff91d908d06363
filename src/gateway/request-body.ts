import type { Socket } from "node:net";
import { Readable, Transform, type TransformCallback } from "node:stream";
import { BadRequestError, PayloadTooLargeError, RequestTimeoutError } from "../core/errors.js";
import { memberValue, scanJson, type JsonScan } from "./json.js";

/**
 * Request bodies, both ways the gateway handles them. Most are streamed
 * upstream as they arrive, held to `server.max_body_bytes` and
 * `server.body_idle_timeout_ms` ({@link limitBody}) and never held in memory.
 *
 * The others are buffered: a request body the gateway must look into, and
 * forwarding what it read (or a rewritten version of it). Shared by the resource policy (reads
 * `model`, issue 5) and quotas (injects `stream_options.include_usage`,
 * issue 6); every other body is streamed through untouched (body.ts).
 *
 * Typical use, in the route handler, before forwarding:
 *
 * ```ts
 * const body = await readJsonBody(request.raw, limits);   // 413, 408, 400 (too deep), 503 (budget spent)
 * const model = jsonMember(body, "model");
 * // ...policy check on `model`...
 * // Quotas: rewrite (spliced, never re-serialised), then forward:
 * const rewritten = withJsonMember(body, "stream_options", { include_usage: true });
 * forward({ ..., headers: withBodyLength(headers, rewritten.length), body: forwardedBody(rewritten) });
 * ```
 *
 * Several stages share one {@link BufferedBody}: read it once, let each stage
 * rewrite it in turn, forward the last version. In the gateway, stage 6
 * (resources.ts) reads it first when the catalog needs `model` and hands it
 * over as `GuardedRequest.body`; a later stage takes that one (or reads the
 * body itself when it is undefined: the stream is then still unread) and
 * passes its rewrite on; `forward()` in proxy.ts sends the `body` of the
 * `Sent` it is given (the guarded body, or its rewrite), with {@link withBodyLength} and
 * {@link forwardedBody}. A body never rewritten is forwarded byte for byte as the
 * client sent it.
 */

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

/** A request body read whole. */
export interface BufferedBody {
  /**
   * The bytes to forward (the client's, or the last rewrite's), in order. A
   * rewrite splices slices of the client's bytes around what it changes, so
   * the body is never copied.
   */
  readonly parts: readonly Buffer[];
  /** Their total length. */
  readonly length: number;
  /**
   * The scan of a JSON body (json.ts): valid or not, where its top-level
   * members lie. Undefined when the body is not JSON by its Content-Type,
   * empty, or rewritten (a rewrite is the last stage to look into it).
   */
  readonly json: JsonScan | undefined;
  /** The request's Content-Type (lower-case, without parameters; "" when absent). */
  readonly contentType: string;
}

/** The media type of a Content-Type header, lower-case, without parameters. */
export function mediaType(contentType: string | undefined): string {
  if (contentType === undefined) return "";
  const end = contentType.indexOf(";");
  return (end === -1 ? contentType : contentType.slice(0, end)).trim().toLowerCase();
}

type RequestStream = Readable & { headers?: Record<string, string | string[] | undefined> };

/**
 * Reads the whole body of `raw` and scans it when its Content-Type is JSON
 * (`application/json`, `*+json`) or absent. Refuses with 413 past
 * `limits.maxBytes`, 408 when the client goes silent, 400 for JSON nested
 * too deep, and 503 when `limits.reserve` finds the gateway's buffer budget
 * spent. The bytes are held once: with a `Content-Length`, in one buffer of
 * that size, taken from the budget before the first byte is read.
 *
 * @example const body = await readJsonBody(request.raw, { maxBytes: 1_048_576, idleMs: 60_000 }); jsonMember(body, "model");
 */
export async function readJsonBody(raw: RequestStream, limits: BodyLimits): Promise<BufferedBody> {
  const contentType = mediaType(typeof raw.headers?.["content-type"] === "string" ? raw.headers["content-type"] : undefined);
  const bytes = await readWhole(raw, limits);
  const isJson = contentType === "" || contentType === "application/json" || contentType.endsWith("+json");
  return { parts: [bytes], length: bytes.length, json: isJson && bytes.length > 0 ? scanJson(bytes) : undefined, contentType };
}

function readWhole(raw: RequestStream, limits: BodyLimits): Promise<Buffer> {
  const { maxBytes } = limits;
  const header = raw.headers?.["content-length"];
  const declared = typeof header === "string" && raw.headers?.["transfer-encoding"] === undefined ? Number(header) : undefined;
  // Listeners rather than `for await`: the async iterator costs an object
  // graph and a promise per chunk, measurable on every inference request.
  return new Promise<Buffer>((resolve, reject) => {
    let whole: Buffer | undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    try {
      if (declared !== undefined) {
        if (declared > maxBytes) throw new PayloadTooLargeError(maxBytes);
        limits.reserve?.(declared);
        whole = Buffer.allocUnsafe(declared);
      }
    } catch (err) {
      reject(err as Error);
      return;
    }
    const idle = watchIdle(raw, limits.idleMs, () => fail(new RequestTimeoutError()));
    const onData = (chunk: Buffer) => {
      idle.touch();
      if (size + chunk.length > maxBytes) return fail(new PayloadTooLargeError(maxBytes));
      if (whole) {
        // Node's parser never delivers more than the declared length.
        chunk.copy(whole, size);
      } else {
        try {
          limits.reserve?.(chunk.length);
        } catch (err) {
          return fail(err as Error);
        }
        chunks.push(chunk);
      }
      size += chunk.length;
    };
    const onEnd = () => {
      cleanup();
      if (whole) resolve(size === whole.length ? whole : whole.subarray(0, size));
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onClose = () => fail(new Error("request body closed before its end"));
    function cleanup() {
      idle.stop();
      raw.off("data", onData);
      raw.off("end", onEnd);
      raw.off("error", fail);
      raw.off("close", onClose);
    }
    raw.on("data", onData);
    raw.on("end", onEnd);
    raw.on("error", fail);
    raw.on("close", onClose);
    if (raw.readableEnded) onEnd();
  });
}

/** The value of the top-level member `name` of a JSON object body, parsed alone; undefined when absent or not a JSON object. */
export function jsonMember(body: BufferedBody, name: string): unknown {
  if (!body.json?.valid || body.parts.length !== 1) return undefined;
  return memberValue(body.parts[0]!, body.json, name);
}

/**
 * The body with its top-level member `name` set to `value` (replaced where
 * it is, else added first), spliced around the client's bytes. Bodies that
 * are not a JSON object are returned unchanged.
 */
export function withJsonMember(body: BufferedBody, name: string, value: unknown): BufferedBody {
  return withJsonMemberText(body, name, JSON.stringify(value));
}

/** {@link withJsonMember} with the value given as its JSON text. */
export function withJsonMemberText(body: BufferedBody, name: string, text: string): BufferedBody {
  const scan = body.json;
  if (!scan?.valid || scan.members === undefined || body.parts.length !== 1) return body;
  const bytes = body.parts[0]!;
  const span = scan.members.get(name);
  const parts =
    span !== undefined
      ? [bytes.subarray(0, span.start), Buffer.from(text, "utf8"), bytes.subarray(span.end)]
      : [bytes.subarray(0, scan.open), Buffer.from(`${JSON.stringify(name)}:${text}${scan.members.size > 0 ? "," : ""}`, "utf8"), bytes.subarray(scan.open)];
  return { parts, length: parts.reduce((sum, part) => sum + part.length, 0), json: undefined, contentType: body.contentType || "application/json" };
}

/**
 * {@link withJsonMember}, then scanned again, so that later stages read the
 * rewritten body as they would the client's (a model alias is rewritten
 * before the quota stage adds `stream_options`). The same body when it is
 * not a JSON object.
 */
export function withJsonMemberScanned(body: BufferedBody, name: string, value: unknown): BufferedBody {
  const rewritten = withJsonMember(body, name, value);
  if (rewritten === body) return body;
  const bytes = Buffer.concat(rewritten.parts as Buffer[], rewritten.length);
  return { parts: [bytes], length: bytes.length, json: scanJson(bytes), contentType: rewritten.contentType };
}

/** A string field of a multipart/form-data body (the `model` of audio and image uploads); undefined when absent. */
export async function formField(body: BufferedBody, contentTypeHeader: string, name: string): Promise<string | undefined> {
  if (body.contentType !== "multipart/form-data") return undefined;
  let form: FormData;
  try {
    form = await new Response(body.parts.length === 1 ? body.parts[0]! : Buffer.concat(body.parts), { headers: { "content-type": contentTypeHeader } }).formData();
  } catch {
    throw new BadRequestError("Invalid multipart/form-data body", "invalid_body");
  }
  const values = form.getAll(name);
  // Two `model` fields: the upstream may read either; refuse rather than guess.
  if (values.length > 1) throw new BadRequestError(`Duplicate form field: ${name}`, "invalid_body");
  return typeof values[0] === "string" ? values[0] : undefined;
}

/**
 * The multipart/form-data body with its text field `name` set to `value`
 * (a model alias replaced by its target in an audio upload): the value's
 * bytes spliced in place, the boundary and every other part untouched.
 * Undefined unless exactly one part is that field, named plainly
 * (`name="model"`, no `filename`) and by no other spelling a server could
 * read as it, so that the upstream reads the rewritten value and no other.
 *
 * @example withFormField(body, "multipart/form-data; boundary=x", "model", "whisper-large-v3")
 */
export function withFormField(body: BufferedBody, contentTypeHeader: string, name: string, value: string): BufferedBody | undefined {
  if (body.contentType !== "multipart/form-data") return undefined;
  const boundary = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentTypeHeader);
  if (!boundary) return undefined;
  const bytes = body.parts.length === 1 ? body.parts[0]! : Buffer.concat(body.parts as Buffer[], body.length);
  const delimiter = Buffer.from(`\r\n--${boundary[1] ?? boundary[2]}`);
  const plain = new RegExp(`^content-disposition:\\s*form-data\\s*;\\s*name="${escapeRegExp(name)}"\\s*$`, "im");
  // Any parameter a lenient parser could read as the field's name (`name=model`, `name*=...`); `filename` is not one.
  const spelled = new RegExp(`(?:^|[;\\s])name\\*?\\s*=\\s*"?${escapeRegExp(name)}(?:"|;|\\s|$)`, "im");
  let found: { start: number; end: number } | undefined;
  // The body starts with the first delimiter (without its CRLF); each part's headers end at a blank line.
  let at = bytes.indexOf(delimiter.subarray(2));
  if (at !== 0) return undefined;
  at += delimiter.length - 2;
  for (;;) {
    if (bytes[at] === 0x2d && bytes[at + 1] === 0x2d) break; // "--": the closing delimiter
    const headersEnd = bytes.indexOf("\r\n\r\n", at);
    const next = bytes.indexOf(delimiter, at);
    if (headersEnd === -1 || next === -1 || headersEnd > next) return undefined;
    const headers = bytes.toString("latin1", at, headersEnd);
    if (spelled.test(headers)) {
      // A second part a server could take for the field, or one spelled otherwise: no rewrite.
      if (found || !plain.test(headers) || /filename/i.test(headers)) return undefined;
      found = { start: headersEnd + 4, end: next };
    }
    at = next + delimiter.length;
  }
  if (!found) return undefined;
  const parts = [bytes.subarray(0, found.start), Buffer.from(value, "utf8"), bytes.subarray(found.end)];
  return { parts, length: parts.reduce((sum, part) => sum + part.length, 0), json: undefined, contentType: body.contentType };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A rewritten body up to this size is joined into one buffer before it is forwarded: a copy this small costs less than a stream. */
const JOIN_BELOW_BYTES = 64 * 1024;

/**
 * The body to forward, as what it is: its bytes when it is in one part
 * (undici writes a buffer with the request head in one go); a small rewrite
 * (the `stream_options` a usage meter adds to a chat request) joined into one
 * buffer; a large one a stream of its parts, in order (spliced around the
 * client's bytes, never copied: a 1 MB prompt is not held twice).
 */
export function forwardedBody(body: BufferedBody): Buffer | Readable {
  if (body.parts.length === 1) return body.parts[0]!;
  if (body.length < JOIN_BELOW_BYTES) return Buffer.concat(body.parts, body.length);
  return Readable.from(body.parts, { objectMode: false });
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
