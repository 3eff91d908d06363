import type { IncomingMessage } from "node:http";
import { Readable, type Transform, type Writable } from "node:stream";
import zlib from "node:zlib";
import { jsonMember, mediaType, readJsonBody, withJsonMember, withJsonMemberText, type BodyLimits, type BufferedBody } from "./request-body.js";
import { MAX_JSON_DEPTH, nestingExceeds, parseJsonWithin } from "./json.js";

/**
 * LLM token budgets: how many tokens a response used, read from the `usage`
 * the OpenAI API puts in it — the JSON body, or for a stream (server-sent
 * events) the usage chunk at its end — while the response passes through to
 * the client unbuffered.
 *
 * A streamed chat completion carries usage only when the request asked for
 * it (`stream_options.include_usage: true`). For a client with a token
 * budget the gateway asks on its behalf, and when the client had not asked,
 * removes that extra chunk (`choices: []`, `usage: {...}`) from what it sees,
 * so that the client gets the stream it asked for.
 *
 * A budget cannot be dodged (issue 19): tokens are charged the moment the
 * `usage` is read, not when the client has read the answer; a client that
 * leaves before it arrived does not stop the meter (the upstream's answer is
 * read on, within {@link DRAIN_BOUNDS}); a
 * compressed answer is decompressed for the meter; a JSON answer of any size
 * is scanned as it streams. When no `usage` can be read the request is
 * charged an estimate ({@link UsageEstimate}), never nothing.
 */

/** How much of an upstream's answer is still read for its `usage` after the client left. */
export interface DrainBounds {
  /** At most this many more bytes ({@link meterUsage}). */
  readonly maxBytes: number;
  /** For at most this long ({@link drainSignal}). */
  readonly maxMs: number;
}

/** The gateway's bounds (docs/quotas.md): 8 MiB, 30 s. */
export const DRAIN_BOUNDS: DrainBounds = { maxBytes: 8 * 1024 * 1024, maxMs: 30_000 };
/** A server-sent event larger than this is not parsed (its `usage` is not read; the estimate is charged). */
export const MAX_EVENT_BYTES = 1024 * 1024;
/** A top-level JSON `usage` value larger than this is not parsed. */
const MAX_USAGE_JSON_BYTES = 64 * 1024;
/** Characters (UTF-8 bytes) per token of the estimate: ~4 for English text in the OpenAI tokenizers; bytes over-count other scripts, in the budget's favour. */
const BYTES_PER_TOKEN = 4;

/** `v` when it is a count of tokens (a finite number, not negative), else undefined. */
function tokenCount(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : undefined;
}

/** Tokens in a `usage` object: `total_tokens`, else prompt + completion (Chat) or input + output (Responses API). */
export function usageTotal(usage: unknown): number | undefined {
  if (!usage || typeof usage !== "object") return undefined;
  const u = usage as Record<string, unknown>;
  const total = tokenCount(u.total_tokens);
  if (total !== undefined) return total;
  const prompt = tokenCount(u.prompt_tokens) ?? tokenCount(u.input_tokens);
  const completion = tokenCount(u.completion_tokens) ?? tokenCount(u.output_tokens);
  return prompt === undefined && completion === undefined ? undefined : (prompt ?? 0) + (completion ?? 0);
}

/** Tokens of a `usage`: its total (what budgets count), and the prompt and completion parts (what prices apply to). */
export interface TokenCount {
  readonly total: number;
  readonly prompt: number;
  readonly completion: number;
}

/**
 * A `usage` object's {@link TokenCount}: prompt = `prompt_tokens` or
 * `input_tokens`, completion = `completion_tokens` or `output_tokens`
 * (0 when absent, as in Embeddings); undefined when it has no total.
 */
export function usageCount(usage: unknown): TokenCount | undefined {
  const total = usageTotal(usage);
  if (total === undefined) return undefined;
  const u = usage as Record<string, unknown>;
  return {
    total,
    prompt: tokenCount(u.prompt_tokens) ?? tokenCount(u.input_tokens) ?? 0,
    completion: tokenCount(u.completion_tokens) ?? tokenCount(u.output_tokens) ?? 0,
  };
}

/** `usage` of a response object, or of the `response` inside a Responses API event (`response.completed`). */
function usageOf(json: unknown): TokenCount | undefined {
  if (!json || typeof json !== "object") return undefined;
  const o = json as { usage?: unknown; response?: { usage?: unknown } };
  return usageCount(o.usage) ?? usageCount(o.response?.usage);
}

/**
 * What a request is charged when its answer's `usage` cannot be read (the
 * client left and the upstream did not finish within the bounds, an encoding
 * the gateway cannot decode, an answer without `usage`):
 * `promptTokens` + `maxTokens`, or without a `max_tokens` in the request,
 * `promptTokens` + the tokens streamed so far; at least 1.
 */
export interface UsageEstimate {
  /** The request body's bytes / 4: JSON syntax and field names count too, so this over-estimates the prompt. */
  readonly promptTokens: number;
  /** `max_completion_tokens`, `max_tokens` or `max_output_tokens` of the request (times its `n`), when it set one. */
  readonly maxTokens: number | undefined;
}

/** What the gateway does to a request of a client with a token budget. */
export interface UsagePlan {
  /** The body to forward instead of the client's (with `stream_options.include_usage`), when it was rewritten or read. */
  readonly body: BufferedBody | undefined;
  /** True when the gateway asked for usage the client did not ask for: its chunk is removed from the stream. */
  readonly stripUsageChunk: boolean;
  /** For an inference request (its answer reports `usage`): what it costs when the `usage` cannot be read. */
  readonly estimate: UsageEstimate | undefined;
  /** The `model` the request body names (usage is counted per model). */
  readonly model?: string | undefined;
}

/** `stream_options` asking for usage, as JSON. */
const INCLUDE_USAGE = JSON.stringify({ include_usage: true });

const NOTHING: UsagePlan = { body: undefined, stripUsageChunk: false, estimate: undefined };

/** Chat Completions and (legacy) Completions, under any prefix (`/v1/`, Llama Stack's `/v1/openai/v1/`). */
function isStreamableInference(path: string): boolean {
  return path.endsWith("/chat/completions") || path.endsWith("/completions");
}

/** The inference routes whose answers report `usage`: the streamable ones, Embeddings and the Responses API. */
export function isInference(method: string | undefined, path: string): boolean {
  return method === "POST" && (isStreamableInference(path) || path.endsWith("/embeddings") || path.endsWith("/responses"));
}

/**
 * Before forwarding: for an inference request, reads what its estimate
 * needs, and for a streamed completion makes sure the upstream will report
 * usage. `body` is the buffered body when an earlier stage read it.
 */
export function prepareUsage(raw: IncomingMessage, path: string, body: BufferedBody | undefined, limits: BodyLimits): UsagePlan | Promise<UsagePlan> {
  if (!isInference(raw.method, path)) return NOTHING;
  // The usual request: its body was read by an earlier stage (the policy on its model), and nothing here waits.
  return body ? planOf(path, body) : readJsonBody(raw, limits).then((read) => planOf(path, read));
}

/** {@link prepareUsage} of an inference request whose body is read. */
function planOf(path: string, read: BufferedBody): UsagePlan {
  const estimate = estimateOf(read);
  const named = jsonMember(read, "model");
  const model = typeof named === "string" ? named : undefined;
  if (!isStreamableInference(path) || jsonMember(read, "stream") !== true) return { body: read, stripUsageChunk: false, estimate, model };
  const given = jsonMember(read, "stream_options");
  const options = given && typeof given === "object" && !Array.isArray(given) ? (given as Record<string, unknown>) : {};
  if (options.include_usage === true) return { body: read, stripUsageChunk: false, estimate, model };
  // The usual request, with no `stream_options`: the member is added as it is, encoded once.
  const added = given === undefined ? withJsonMemberText(read, "stream_options", INCLUDE_USAGE) : withJsonMember(read, "stream_options", { ...options, include_usage: true });
  return { body: added, stripUsageChunk: true, estimate, model };
}

/** The members that may bound a request's answer, the first one set counting (Chat Completions, legacy Completions, Responses). */
const MAX_TOKENS_MEMBERS = ["max_completion_tokens", "max_tokens", "max_output_tokens"] as const;

/** The {@link UsageEstimate} of a request body. */
function estimateOf(body: BufferedBody): UsageEstimate {
  let max: number | undefined;
  for (const name of MAX_TOKENS_MEMBERS) {
    const v = jsonMember(body, name);
    if (typeof v === "number" && Number.isFinite(v) && v >= 0) {
      max = v;
      break;
    }
  }
  // `n` choices may each use up to the maximum.
  const n = jsonMember(body, "n");
  const choices = typeof n === "number" && Number.isInteger(n) && n > 1 ? n : 1;
  return { promptTokens: Math.ceil(body.length / BYTES_PER_TOKEN), maxTokens: max === undefined ? undefined : max * choices };
}

/**
 * The signal for the upstream request of a metered inference answer: it
 * fires `bounds.maxMs` after `client`'s, not with it, so that the answer
 * can still be read for its `usage` after the client left
 * ({@link meterUsage}), and no longer.
 */
export function drainSignal(client: AbortSignal, bounds: DrainBounds = DRAIN_BOUNDS): AbortSignal {
  const upstream = new AbortController();
  client.addEventListener(
    "abort",
    () => setTimeout(() => upstream.abort(client.reason), bounds.maxMs).unref(),
    { once: true },
  );
  return upstream.signal;
}

/** How {@link meterUsage} reads an answer and charges it. */
export interface MeterOptions {
  /** The answer's Content-Type: JSON and server-sent events are read for `usage`. */
  readonly contentType: string | undefined;
  /** The answer's Content-Encoding: gzip, deflate, br (zstd where the runtime has it) are decoded for the meter; another is not readable. */
  readonly contentEncoding: string | undefined;
  /** Remove the usage-only chunk the gateway asked for (a compressed stream is decoded, stripped and encoded again in its coding). */
  readonly stripUsageChunk: boolean;
  /** Undefined for an answer that is not an inference one: then only a `usage` it carries is charged. */
  readonly estimate: UsageEstimate | undefined;
  /** Charges tokens; called as each `usage` is read (with what it adds to the ones before), or once with the estimate. Its promise, when it returns one, is the charge being stored. */
  readonly record: (tokens: TokenCount) => unknown;
  /**
   * A budget is charged. It cannot be dodged: an answer the client left is
   * read on for its `usage` (within {@link MeterOptions.drain}). And the
   * end of the answer (a JSON answer up to {@link WHOLE_JSON_BYTES}, whole)
   * reaches the client only once the charge is stored, so that a client
   * that has its answer and asks again is checked against it, whichever
   * process or replica it reaches. Without a budget (usage recording
   * alone) nothing waits, and an answer the client left is cut with it and
   * charged what was read of it, else the estimate.
   */
  readonly budgeted?: boolean;
  /** Its `maxBytes` bounds what is read after the client left (the time is bounded by {@link drainSignal}); default {@link DRAIN_BOUNDS}. */
  readonly drain?: DrainBounds;
}

/**
 * Wraps an upstream answer: returns the body for the client (the same bytes,
 * an event stream event by event as each is complete, without the usage
 * chunk the gateway asked for) and charges its `usage` as soon as it is read.
 * A compressed event stream that loses that chunk is decoded, stripped and
 * encoded again in the same coding, flushed event by event, so that the
 * client sees the same stream whether or not the upstream compressed it
 * (the gateway asks for it uncompressed; not every server listens).
 *
 * An answer the meter has nothing to read in (neither JSON nor events, and
 * no estimate to charge) is returned itself: no stream in between.
 *
 * With a budget, when the client goes away (the returned stream is destroyed) before the
 * `usage` was read, the upstream's answer is read on, at most
 * `drain.maxBytes` more (the time is bounded by {@link drainSignal}),
 * and stopped once its `usage` is charged. An answer that ends, fails or is
 * cut without a readable `usage` is charged the estimate.
 */
export function meterUsage(upstream: Readable, options: MeterOptions): Readable {
  let stream = upstream;
  meter(upstream, options, {
    direct() {},
    open() {
      stream = new Readable({
        read() {
          upstream.resume();
        },
      });
    },
    write: (piece) => stream.push(piece),
    end: () => void stream.push(null),
    destroy: (err) => void stream.destroy(err),
    onClose: (then) => void stream.on("close", then),
  });
  return stream;
}

/**
 * {@link meterUsage} with the client's response as the destination: what
 * the client gets is written to `res` as it comes, with nothing between
 * (the gateway's relay of a metered answer). `res` ends when the answer
 * does (once charged, with a budget); it is destroyed when the upstream
 * fails. Its closing before the end is the client leaving.
 */
export function meterUsageInto(upstream: Readable, res: Writable, options: MeterOptions): void {
  meter(upstream, options, {
    direct() {
      upstream.on("error", () => res.destroy());
      res.once("close", () => {
        if (!upstream.readableEnded) upstream.destroy();
      });
      upstream.pipe(res);
    },
    open() {
      res.on("drain", () => upstream.resume());
    },
    write: (piece) => res.write(piece),
    end: () => void res.end(),
    destroy: () => void res.destroy(),
    onClose: (then) => void res.once("close", then),
  });
}

/** Where {@link meter} sends what the client gets. */
interface MeterSink {
  /** The meter has nothing to read: connect the client to the upstream directly. */
  direct(): void;
  /** The client gets what the meter writes; called once, before the first write. */
  open(): void;
  /** A piece for the client; false: the upstream is paused, and resumed when the client wants more. */
  write(piece: Buffer | string): boolean;
  end(): void;
  destroy(err: Error): void;
  /** `then` runs when the client's side closes (done, or gone). */
  onClose(then: () => void): void;
}

function meter(upstream: Readable, options: MeterOptions, client: MeterSink): void {
  const { estimate, drain = DRAIN_BOUNDS } = options;
  const hold = options.budgeted === true;
  /** Charges still being stored, when the answer's end waits for them. */
  const charges: Promise<unknown>[] = [];
  const record = (tokens: TokenCount) => {
    const stored = options.record(tokens);
    if (hold && stored instanceof Promise) charges.push(stored);
  };
  /** Runs `then` once every charge made so far is stored (at once when none is pending, or nothing waits for them). */
  const whenCharged = (then: () => void) => (charges.length === 0 ? then() : void Promise.allSettled(charges).then(then));
  const type = mediaType(options.contentType);
  const format = type === "text/event-stream" ? "sse" : type === "application/json" || type.endsWith("+json") ? "json" : undefined;
  if (!format && !estimate) return client.direct();
  // null: not encoded; undefined: an encoding the meter cannot read.
  const decoder = decoderFor(options.contentEncoding);
  // Set when the client gets the stripped stream encoded again rather than the upstream's bytes.
  const encoder = decoder && format === "sse" && options.stripUsageChunk ? encoderFor(options.contentEncoding) : undefined;
  let charged: TokenCount = { total: 0, prompt: 0, completion: 0 };
  let seen = false;
  const onUsage = (used: TokenCount) => {
    seen = true;
    // A server that reports usage on every chunk reports running totals: charge what each adds.
    if (used.total > charged.total) {
      record({
        total: used.total - charged.total,
        prompt: Math.max(0, used.prompt - charged.prompt),
        completion: Math.max(0, used.completion - charged.completion),
      });
      charged = used;
    }
  };
  const scanner =
    !format || decoder === undefined
      ? undefined
      : format === "sse"
        ? sseScanner(options.stripUsageChunk && (decoder === null || encoder !== undefined), onUsage)
        : // Held whole until charged only when the client gets the meter's bytes (not an encoded answer's own).
          jsonScanner(onUsage, hold && decoder === null);
  let received = 0;
  let drained = 0;
  let ended = false;
  let settled = false;
  let clientGone = false;

  /** Once, when nothing more will be read: an answer whose `usage` was not read is charged the estimate. */
  function settle() {
    if (settled) return;
    settled = true;
    if (seen || !estimate) return;
    const streamed = scanner ? scanner.streamedTokens() : Math.ceil(received / BYTES_PER_TOKEN);
    const completion = estimate.maxTokens ?? streamed;
    record({ total: Math.max(1, estimate.promptTokens + completion), prompt: estimate.promptTokens, completion });
  }

  client.open();
  if (decoder) {
    decoder.on("data", (chunk: Buffer) => {
      const forClient = scanner!.push(chunk);
      if (encoder && !clientGone && forClient.length > 0) {
        encoder.write(forClient);
        encoder.flush();
      }
    });
    // A body that does not decode: its usage is unreadable, the estimate is charged; re-encoded, the client's copy ends there.
    decoder.on("error", (err) => {
      if (encoder && !clientGone) client.destroy(err);
    });
  }
  if (encoder) {
    encoder.on("data", (chunk: Buffer) => {
      if (!clientGone && !client.write(chunk)) upstream.pause();
    });
    encoder.on("end", () => {
      whenCharged(() => {
        if (!clientGone) client.end();
      });
    });
    encoder.on("error", (err) => {
      if (!clientGone) client.destroy(err);
    });
  }
  /** Runs `then` once the decoder has given all it will (at once when it already failed). */
  const afterDecoder = (then: () => void) => (decoder!.closed ? then() : decoder!.once("close", then));

  /** What one read of the upstream's socket gave, not yet read by the scanner (see {@link readBatch}). */
  const batch: Buffer[] = [];
  /**
   * The pieces of an answer that came in one read of the upstream's socket
   * (an HTTP client hands over each chunk of a chunked body by itself, one
   * per token of a stream, all in one go), read and written on as one: one
   * scan, one write to the client. Runs once they are all in (before the
   * next read), and before the answer's end or cut is handled.
   */
  function readBatch() {
    if (batch.length === 0) return;
    const chunk = batch.length === 1 ? batch[0]! : Buffer.concat(batch);
    batch.length = 0;
    let forClient: Buffer | string;
    try {
      forClient = scanner!.push(chunk);
    } catch (err) {
      // Not on an upstream's event any more: a fault here would end the process. The answer is cut instead (and charged the estimate).
      upstream.destroy(err as Error);
      return;
    }
    passOn(forClient);
  }
  /** Writes what the client gets of a read (pausing the upstream while the client is behind); once it left and the usage is charged, stops reading. */
  function passOn(forClient: Buffer | string) {
    if (clientGone) {
      // Charged: nobody reads the rest.
      if (seen) upstream.destroy();
    } else if (forClient.length > 0 && !client.write(forClient)) upstream.pause();
  }
  upstream.on("data", (chunk: Buffer) => {
    received += chunk.length;
    if (clientGone) {
      drained += chunk.length;
      if (drained > drain.maxBytes) return void upstream.destroy();
    }
    if (!decoder && scanner) {
      if (batch.push(chunk) === 1) process.nextTick(readBatch);
      return;
    }
    if (decoder) decoder.write(chunk);
    // Re-encoded, the client's bytes come from the encoder.
    passOn(encoder ? "" : chunk);
  });
  upstream.on("end", () => {
    readBatch();
    ended = true;
    if (!decoder) {
      const rest = scanner?.end() ?? "";
      settle();
      whenCharged(() => {
        if (clientGone) return;
        if (rest.length > 0) client.write(rest);
        client.end();
      });
      return;
    }
    afterDecoder(() => {
      const rest = scanner!.end();
      if (encoder && !clientGone) encoder.end(rest);
      settle();
      // Re-encoded, the encoder ends the client's copy.
      if (!encoder) {
        whenCharged(() => {
          if (!clientGone) client.end();
        });
      }
    });
    decoder.end();
  });
  upstream.on("error", (err) => {
    readBatch();
    if (!clientGone) client.destroy(err);
  });
  upstream.on("close", () => {
    if (ended) return;
    readBatch();
    // Cut (by the upstream, a bound, or the client's departure on a route without usage).
    decoder?.destroy();
    encoder?.destroy();
    settle();
  });
  client.onClose(() => {
    if (ended || settled) return;
    clientGone = true;
    encoder?.destroy();
    // Nothing to wait for: no budget, charged already, an answer that carries no usage, or one the meter cannot read.
    if (!hold || seen || !estimate || !scanner) upstream.destroy();
    else upstream.resume();
  });
}

/** The decompressor for a Content-Encoding; null for none, undefined for one the meter cannot read (several, or unknown). */
function decoderFor(encoding: string | undefined): Transform | null | undefined {
  const name = (encoding ?? "").trim().toLowerCase();
  if (name === "" || name === "identity") return null;
  if (name === "gzip" || name === "x-gzip") return zlib.createGunzip();
  // RFC 9110 §8.4.1.2: "deflate" is the zlib format.
  if (name === "deflate") return zlib.createInflate();
  if (name === "br") return zlib.createBrotliDecompress();
  // Node 22.15 and later.
  if (name === "zstd") return (zlib as { createZstdDecompress?: () => Transform }).createZstdDecompress?.();
  return undefined;
}

/** The compressor for a Content-Encoding {@link decoderFor} reads; undefined for none. */
function encoderFor(encoding: string | undefined): (Transform & zlib.Zlib) | undefined {
  const name = (encoding ?? "").trim().toLowerCase();
  if (name === "gzip" || name === "x-gzip") return zlib.createGzip();
  if (name === "deflate") return zlib.createDeflate();
  if (name === "br") return zlib.createBrotliCompress();
  if (name === "zstd") return (zlib as { createZstdCompress?: () => Transform & zlib.Zlib }).createZstdCompress?.();
  return undefined;
}

/** Reads an answer for its `usage`, as it streams. */
interface Scanner {
  /** The next piece of the answer; returns what the client gets for it. */
  push(chunk: Buffer): Buffer | string;
  /** The answer ended: reads what was left, returns what the client still gets. */
  end(): Buffer | string;
  /** Tokens in the answer so far, by its size: the estimate's "tokens streamed so far". */
  streamedTokens(): number;
}

/** What {@link sseScanner}'s `charge` says of an event: passed on as it is, or removed. */
const KEEP = Symbol("keep");
const DROP = Symbol("drop");
/** A piece of which nothing is passed on (it held only the usage chunk). */
const EMPTY = Buffer.alloc(0);

/** Events end at a blank line (`\n\n`, `\r\n\r\n`, `\r\r`: the SSE spec allows all three). */
const EVENT_END = /\r\n\r\n|\n\n|\r\r/g;

/**
 * Server-sent events: each event naming a `usage` is parsed and charged at
 * once. The estimate counts one token per `data:` event (OpenAI, vLLM, TGI
 * and Ollama stream about one token per chunk).
 */
function sseScanner(strip: boolean, onUsage: (tokens: TokenCount) => void): Scanner {
  let pending = "";
  let events = 0;
  /** Bytes passed on unparsed after an event over {@link MAX_EVENT_BYTES}. */
  let unparsed = 0;
  /** True while nothing of an event is held (here or in the decoder): the last piece ended at an event's end. */
  let atEventEnd = true;
  let decoder: InstanceType<typeof TextDecoder> | undefined;

  /** The event as it should reach the client ("" to drop it); charges its usage. */
  function pass(event: string): string {
    const lines = event.split(/\r\n|\n|\r/);
    const values = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(dataValue(l, 0)));
    if (values.length === 0) return event;
    if (!values[0]!.startsWith("[DONE]")) events++;
    if (!event.includes('"usage"')) return event;
    const outcome = charge(values.join("\n"));
    if (outcome === KEEP) return event;
    if (outcome === DROP) return "";
    const others = lines.filter((l) => !l.startsWith("data:"));
    return [...others, `data: ${outcome}`].join("\n");
  }

  /**
   * The data of an event that may hold a usage: charges it, and says what
   * becomes of the event: kept, dropped (the usage-only chunk the gateway
   * asked for) or, for a content chunk that also carries the usage the
   * gateway asked for, the data to send instead (that chunk without it).
   */
  function charge(data: string): typeof KEEP | typeof DROP | string {
    // Not JSON: nothing to count. (V8's parser does not recurse; only the top level and `usage` are read.)
    let json: unknown;
    try {
      json = JSON.parse(data);
    } catch {
      return KEEP;
    }
    const used = usageOf(json);
    if (used === undefined) return KEEP;
    onUsage(used);
    if (!strip) return KEEP;
    const chunk = json as { choices?: unknown; usage?: unknown };
    // The extra chunk the gateway asked for: no choices, only usage. Dropped whole.
    if (Array.isArray(chunk.choices) && chunk.choices.length === 0) return DROP;
    // A server that puts usage on a content chunk: keep the content, remove the usage (unless nested past what
    // JSON.stringify, which recurses, can write again: then the client also sees the usage).
    if (nestingExceeds(data, MAX_JSON_DEPTH)) return KEEP;
    const { usage: _usage, ...rest } = chunk;
    return JSON.stringify(rest);
  }

  /** The events naming a usage in the piece {@link wholeEvents} reads: `[from, to)` pairs (kept between pieces: no allocation per piece). */
  const named: number[] = [];

  /**
   * A piece of whole events, each ending at `\n\n`, no `\r` (the usual
   * piece: one per token of every metered stream, or a few tokens' events
   * together), searched as Latin-1 text ({@link readEvents}). Only an
   * event naming a usage is decoded and parsed (a one-line event's data
   * as it is, without splitting it into lines); the others pass as they
   * are, only counted. Returns the piece itself when nothing changed (the
   * usual case: `"usage":null`, which OpenAI puts on every chunk once usage
   * is asked for, names none), else it without the usage chunk, or
   * undefined when it is not such a piece.
   */
  function wholeEvents(chunk: Buffer): Buffer | undefined {
    if (named.length > 0) named.length = 0;
    const text = chunk.toString("latin1");
    const counted = readEvents(text, named);
    if (counted === -1) return undefined;
    events += counted;
    if (named.length === 0) return chunk;
    let pieces: Buffer[] | undefined;
    /** Where the bytes not yet copied into `pieces` start. */
    let kept = 0;
    for (let k = 0; k < named.length; k += 2) {
      const from = named[k]!;
      const to = named[k + 1]!;
      if (to - from > MAX_EVENT_BYTES) {
        // Not an OpenAI chunk: passed on unread, counted.
        events++;
        continue;
      }
      let passed: Buffer | undefined;
      const at = dataValue(text, from);
      // (`to` is where the event's blank line starts: its first line ends there when it has one line.)
      if (at !== -1 && text.indexOf("\n", from) === to) {
        // The usual event: one `data:` line, its value read as it is (the usual usage chunk: its usage object alone).
        if (!text.startsWith("[DONE]", at)) events++;
        const only = usageOnlyChunk(chunk, text, at, to);
        if (only) onUsage(only);
        const outcome = only ? (strip ? DROP : KEEP) : charge(chunk.toString("utf8", at, to));
        if (outcome === KEEP) continue;
        if (outcome !== DROP) passed = Buffer.from(`data: ${outcome}`, "utf8");
      } else {
        // Several lines (an `event:` or `id:` before the data): read line by line.
        const event = chunk.toString("utf8", from, to);
        const rewritten = pass(event);
        if (rewritten === event) continue;
        if (rewritten !== "") passed = Buffer.from(rewritten, "utf8");
      }
      pieces ??= [];
      if (from > kept) pieces.push(chunk.subarray(kept, from));
      if (passed) pieces.push(passed);
      // An event dropped whole takes its blank line with it.
      kept = passed ? to : to + 2;
    }
    if (!pieces) return chunk;
    if (kept < chunk.length) pieces.push(chunk.subarray(kept));
    // The usual piece that lost the usage chunk: nothing, or what came before it (no copy).
    return pieces.length <= 1 ? (pieces[0] ?? EMPTY) : Buffer.concat(pieces);
  }

  return {
    push(chunk) {
      if (unparsed > 0) {
        unparsed += chunk.length;
        return chunk;
      }
      // The usual piece (one per token of every metered stream, or a few tokens' events together): whole events,
      // read in bytes, passed on as they are but for a usage chunk to remove.
      const whole = atEventEnd ? wholeEvents(chunk) : undefined;
      if (whole) return whole;
      decoder ??= new TextDecoder();
      pending += decoder.decode(chunk, { stream: true });
      let out = "";
      let start = 0;
      EVENT_END.lastIndex = 0;
      for (let m = EVENT_END.exec(pending); m; m = EVENT_END.exec(pending)) {
        const event = pass(pending.slice(start, m.index));
        if (event !== "") out += event + m[0];
        start = m.index + m[0].length;
      }
      pending = pending.slice(start);
      if (pending.length > MAX_EVENT_BYTES) {
        // An event this large is not an OpenAI chunk: pass the rest on as it comes, unread.
        out += pending;
        unparsed = Buffer.byteLength(pending);
        pending = "";
      }
      // A piece ending in `\n\n` leaves nothing in the decoder (its last bytes are ASCII).
      atEventEnd = pending === "" && endsAtEventEnd(chunk);
      return out;
    },
    end() {
      if (unparsed > 0) return "";
      if (decoder) pending += decoder.decode();
      const rest = pending === "" ? "" : pass(pending);
      pending = "";
      return rest;
    },
    streamedTokens: () => events + Math.ceil(unparsed / BYTES_PER_TOKEN),
  };
}

/** How a usage-only chunk ends when OpenAI-compatible servers write it (compact JSON): its last two top-level members. */
const USAGE_ONLY_TAIL = '"choices":[],"usage":{';

/**
 * The usage of a usage-only chunk as OpenAI, vLLM and most servers write
 * it: compact JSON ending in `"choices":[],"usage":{...}}`, the data of the
 * one-line event at `[at, to)` of the piece `bytes` (`text`: the same as
 * Latin-1). Only the `usage` object is parsed, not the whole chunk: what
 * lies between the tail's `{` and the chunk's last `}` must parse as one
 * value. Both members are then top-level: the `}` that closes `usage` is
 * followed by the one that ends the chunk. (The tail cannot lie inside a
 * string: a string's quotes are escaped.) What comes before the tail is
 * not checked: a chunk that is not JSON but ends so is charged its usage,
 * and removed when the gateway asked for it, where the whole chunk parsed
 * would have been passed on uncounted. Undefined for any other layout, or
 * a `usage` with no total: then the whole chunk is parsed.
 */
function usageOnlyChunk(bytes: Buffer, text: string, at: number, to: number): TokenCount | undefined {
  const last = to - 1;
  if (text.charCodeAt(last) !== CLOSE_OBJECT || text.charCodeAt(last - 1) !== CLOSE_OBJECT) return undefined;
  const tail = text.lastIndexOf(USAGE_ONLY_TAIL, last);
  if (tail < at) return undefined;
  const open = tail + USAGE_ONLY_TAIL.length - 1;
  const flat = flatUsage(text, open, last - 1);
  if (flat !== NOT_FLAT) return flat;
  // One JSON value from `{` to the last `}` but one: the usage object, closed there (else this throws).
  try {
    return usageCount(JSON.parse(bytes.toString("utf8", open, last)));
  } catch {
    return undefined;
  }
}

/** What {@link flatUsage} returns for a text it does not read: the caller parses it. */
const NOT_FLAT = Symbol("not flat");
const ZERO = 0x30;
const NINE = 0x39;
/** Integers of up to this many digits are exact in a double. */
const MAX_DIGITS = 15;

/**
 * The {@link usageCount} of the usual `usage` object, read without a JSON
 * parse: `text` from `open` (its `{`) to `close` (its `}`) is compact JSON
 * whose members are all `"name":integer` or `"name":null`, as vLLM,
 * llama.cpp, Ollama and most servers write it
 * (`{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}`, in any
 * order). Duplicates: the last counts, as in `JSON.parse`. Anything else (a
 * space, a nested object, a fraction, an escape in a name, a number too
 * long to be exact) is {@link NOT_FLAT}: the caller parses it. `text` may be
 * UTF-8 read as Latin-1: a name with other bytes is not one of ours, and no
 * byte of a multi-byte character is a quote or a backslash.
 */
function flatUsage(text: string, open: number, close: number): TokenCount | undefined | typeof NOT_FLAT {
  if (text.charCodeAt(open) !== OPEN_OBJECT || text.charCodeAt(close) !== CLOSE_OBJECT) return NOT_FLAT;
  /** The members {@link usageCount} reads, as they were found. */
  const members: Record<string, number | null> = {};
  for (let at = open + 1; at < close; ) {
    if (text.charCodeAt(at) !== QUOTE) return NOT_FLAT;
    const nameEnd = text.indexOf('"', at + 1);
    if (nameEnd === -1 || nameEnd >= close || text.charCodeAt(nameEnd + 1) !== COLON) return NOT_FLAT;
    const from = nameEnd + 2;
    let value: number | null = null;
    let end = from;
    if (text.startsWith("null", from)) end = from + 4;
    else {
      for (let c = text.charCodeAt(end); c >= ZERO && c <= NINE; c = text.charCodeAt(++end)) value = (value ?? 0) * 10 + (c - ZERO);
      // Not an integer (a fraction, an exponent, a sign, a string), not exact, or a leading zero (not JSON).
      if (end === from || end - from > MAX_DIGITS || (text.charCodeAt(from) === ZERO && end - from > 1)) return NOT_FLAT;
    }
    // A trailing comma is not JSON.
    if (end === close - 1 || (end !== close && text.charCodeAt(end) !== COMMA)) return NOT_FLAT;
    const name = text.slice(at + 1, nameEnd);
    if (USAGE_MEMBERS.has(name)) members[name] = value;
    // An escape may spell one of them (`prompt\u005ftokens`): the parse tells.
    else if (name.includes("\\")) return NOT_FLAT;
    at = end + 1;
  }
  return usageCount(members);
}

/** The members of a `usage` object that {@link usageCount} reads. */
const USAGE_MEMBERS: ReadonlySet<string> = new Set(["prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens"]);

const LF = 0x0a;
const CR = 0x0d;
const USAGE_KEY = Buffer.from('"usage"');
const SPACE = 0x20;
const TAB = 0x09;

function endsAtEventEnd(chunk: Buffer): boolean {
  return chunk.length >= 2 && chunk[chunk.length - 1] === LF && chunk[chunk.length - 2] === LF;
}

/**
 * Reads a piece of server-sent events that must be whole events, each
 * ending at `\n\n`, with no `\r`: returns -1 when it is not. `text` is
 * the piece's bytes as Latin-1, one character per byte: V8 searches a
 * string natively and fast (a short `Buffer#indexOf` costs a call into C++
 * each time). Else returns the number of its events that hold a `data:`
 * line whose value is not `[DONE]` and name no usage, and appends to
 * `named` where each event that names a usage lies (`[from, to)`, without
 * its blank line). An event names a usage when it holds `"usage"` followed
 * by anything but `: null` (spaces allowed): a usage, or text the slow path
 * must read.
 */
function readEvents(text: string, named: number[]): number {
  const n = text.length;
  if (n < 2 || !text.endsWith("\n\n") || text.includes("\r")) return -1;
  let counted = 0;
  /** The next `"usage"` key at or after the current event's start; -1 when there is none. */
  let key = usageKey(text, 0);
  for (let start = 0; start < n; ) {
    // Found: the piece ends with one.
    const end = text.indexOf("\n\n", start);
    let usage = false;
    for (; key !== -1 && key < end; key = usageKey(text, key + USAGE_KEY.length)) {
      if (namesUsage(text, key + USAGE_KEY.length)) {
        usage = true;
        break;
      }
    }
    if (usage) {
      named.push(start, end);
      key = usageKey(text, end);
    } else if (firstData(text, start, end) === DATA) counted++;
    start = end + 2;
  }
  return counted;
}

/**
 * Where the next `"usage"` in `text` starts, at or after `from`; -1 when
 * there is none. (The word is searched for, then its quotes checked: V8
 * finds a word that starts with a rare letter far faster than one that
 * starts with a quote, of which JSON has many.)
 */
function usageKey(text: string, from: number): number {
  for (let at = text.indexOf("usage", from + 1); at !== -1; at = text.indexOf("usage", at + 5)) {
    if (text.charCodeAt(at - 1) === QUOTE && text.charCodeAt(at + 5) === QUOTE) return at - 1;
  }
  return -1;
}

/** True when what follows a `"usage"` key (from `at`) is anything but `: null` (spaces allowed). */
function namesUsage(text: string, at: number): boolean {
  let j = at;
  while (text.charCodeAt(j) === SPACE) j++;
  if (text.charCodeAt(j) !== COLON) return true;
  j++;
  while (text.charCodeAt(j) === SPACE) j++;
  return !text.startsWith("null", j);
}

/** An event's first `data:` line: none, a value, or `[DONE]`. */
const NO_DATA = 0;
const DATA = 1;
const DONE = 2;

/** What the first `data:` line of the event in `[start, end)` holds (lines end at `\n`). */
function firstData(text: string, start: number, end: number): number {
  for (let line = start; line < end; ) {
    const at = dataValue(text, line);
    if (at !== -1) return text.startsWith("[DONE]", at) ? DONE : DATA;
    const next = text.indexOf("\n", line);
    if (next === -1 || next >= end) break;
    line = next + 1;
  }
  return NO_DATA;
}

/** Where the value of the `data:` line starting at `at` starts (after `data:` and one space); -1 when that line is not one. */
function dataValue(text: string, at: number): number {
  if (!text.startsWith("data:", at)) return -1;
  return text.charCodeAt(at + 5) === SPACE ? at + 6 : at + 5;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
/** A key longer than this is not `usage`: its bytes are not kept. */
const MAX_KEY_BYTES = 32;

/**
 * A JSON answer of any size. A small one (the usual chat completion) is held
 * and parsed at its end; a larger one gets a byte-level scan (JSON's structure is ASCII;
 * UTF-8 never puts an ASCII byte inside a multi-byte character) that tracks
 * strings and nesting and keeps only the value of the top-level `usage`
 * key, parsed and charged as soon as it is complete. OpenAI-compatible
 * servers put `usage` last, but its place does not matter; nothing else of
 * a large answer is held. The estimate is the answer's bytes / 4. With
 * `holdWhole`, a small answer reaches the client at its end, not as it
 * comes (see {@link MeterOptions.budgeted}).
 */
function jsonScanner(onUsage: (tokens: TokenCount) => void, holdWhole = false): Scanner {
  /** Made only for an answer too large to hold. */
  let scanner: Scanner | undefined;
  /** The answer so far while it is small: parsed once, natively, at its end. */
  let held: Buffer[] | undefined = [];
  let heldBytes = 0;
  return {
    push(chunk) {
      if (held) {
        heldBytes += chunk.length;
        if (heldBytes <= WHOLE_JSON_BYTES) {
          held.push(chunk);
          return holdWhole ? "" : chunk;
        }
        // Too large to hold: scanned from its start, as it streams (what was held back goes to the client now).
        scanner = jsonByteScanner(onUsage);
        for (const piece of held) scanner.push(piece);
        const release = holdWhole ? Buffer.concat([...held, chunk]) : chunk;
        held = undefined;
        scanner.push(chunk);
        return release;
      }
      return scanner!.push(chunk);
    },
    end() {
      if (!held) return "";
      const whole = held.length === 1 ? held[0]! : Buffer.concat(held, heldBytes);
      held = undefined;
      const used = lastUsage(whole) ?? wholeUsage(whole);
      if (used !== NO_USAGE) onUsage(used);
      return holdWhole ? whole : "";
    },
    streamedTokens: () => (scanner ? scanner.streamedTokens() : Math.ceil(heldBytes / BYTES_PER_TOKEN)),
  };
}

/** What {@link lastUsage} and {@link wholeUsage} return for an answer without a usable top-level `usage`. */
const NO_USAGE = Symbol("no usage");

/**
 * The top-level `usage` of a whole JSON object answer, read from its end
 * without parsing the rest (OpenAI-compatible servers put it last, or
 * before a few short members: `service_tier`, `system_fingerprint`).
 * The last `"usage"` key is taken (as `JSON.parse` takes the last of
 * duplicates) when its value is an object and what follows the value
 * closes exactly one level, at the end of the answer: then the key belongs
 * to the object the answer ends with, the top-level one. The value alone is
 * parsed. Undefined when this cannot tell (no such key, a `usage` not an
 * object, one nested, a key after an escaped quote): the caller parses the
 * whole. Like the byte scan of a large answer, it does not check the rest
 * is valid JSON; an answer that is not is charged the `usage` it states.
 */
function lastUsage(whole: Buffer): TokenCount | typeof NO_USAGE | undefined {
  const at = whole.lastIndexOf(USAGE_KEY);
  // Not found, or the quote is escaped (the end of a key such as `x\"usage`): the slow way tells.
  if (at <= 0 || whole[at - 1] === BACKSLASH) return undefined;
  const colon = skipSpace(whole, at + USAGE_KEY.length);
  if (whole[colon] !== COLON) return undefined;
  const start = skipSpace(whole, colon + 1);
  if (whole[start] !== OPEN_OBJECT) return undefined;
  const end = closingOf(whole, start, 0);
  if (end === -1) return undefined;
  // What follows the value: more members at its level, then the `}` of its object, the answer's last byte but spaces.
  const close = closingOf(whole, end + 1, -1);
  if (close === -1 || whole[close] !== CLOSE_OBJECT || skipSpace(whole, close + 1) !== whole.length) return undefined;
  const flat = flatUsage(whole.toString("latin1", start, end + 1), 0, end - start);
  if (flat !== NOT_FLAT) return flat ?? NO_USAGE;
  let value: unknown;
  try {
    value = JSON.parse(whole.toString("utf8", start, end + 1));
  } catch {
    return undefined;
  }
  return usageCount(value) ?? NO_USAGE;
}

/** The top-level `usage` of a whole JSON answer, parsed whole: only `usage` is read of it, so its nesting does not matter (V8's parser does not recurse). */
function wholeUsage(whole: Buffer): TokenCount | typeof NO_USAGE {
  let json: unknown;
  try {
    json = JSON.parse(whole.toString("utf8"));
  } catch {
    return NO_USAGE;
  }
  const used = json && typeof json === "object" && !Array.isArray(json) ? usageCount((json as { usage?: unknown }).usage) : undefined;
  return used ?? NO_USAGE;
}

/** The first index at or after `i` that is not JSON whitespace. */
function skipSpace(bytes: Buffer, i: number): number {
  while (i < bytes.length) {
    const c = bytes[i]!;
    if (c !== SPACE && c !== LF && c !== CR && c !== TAB) break;
    i++;
  }
  return i;
}

/**
 * Scans JSON text from `from` (outside any string) for the bracket that
 * brings the nesting to `level` relative to `from`: 0 is the close of the
 * value opening at `from`, -1 the close of the container `from` is in.
 * Returns its index, or -1 when the text ends first.
 */
function closingOf(bytes: Buffer, from: number, level: 0 | -1): number {
  let depth = 0;
  let inString = false;
  for (let i = from; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) inString = true;
    else if (c === OPEN_OBJECT || c === OPEN_ARRAY) depth++;
    else if ((c === CLOSE_OBJECT || c === CLOSE_ARRAY) && --depth === level) return i;
  }
  return -1;
}

/** A JSON answer up to this size is held and parsed whole at its end (one native parse); a larger one is scanned. */
const WHOLE_JSON_BYTES = 64 * 1024;

/** The byte scan of {@link jsonScanner} for an answer too large to hold. */
function jsonByteScanner(onUsage: (tokens: TokenCount) => void): Scanner {
  let bytes = 0;
  let depth = 0;
  let topIsObject = false;
  let inString = false;
  let escaped = false;
  /** At depth 1 of the top-level object, the next string is a key. */
  let expectKey = false;
  /** The raw bytes of the depth-1 key being read. */
  let keyBytes: number[] | undefined;
  let key = "";
  /** The raw bytes of the top-level `usage` value, while it is being read. */
  let value: Buffer[] | undefined;
  let valueBytes = 0;

  function keep(piece: Buffer) {
    valueBytes += piece.length;
    if (valueBytes > MAX_USAGE_JSON_BYTES) value = undefined;
    else value!.push(piece);
  }

  function usageRead() {
    // Not a usage object (or nested past what the gateway reads): nothing to charge from it.
    const used = usageCount(parseJsonWithin(Buffer.concat(value!).toString("utf8")));
    if (used !== undefined) onUsage(used);
    value = undefined;
  }

  return {
    push(chunk) {
      bytes += chunk.length;
      let from = 0;
      for (let i = 0; i < chunk.length; i++) {
        const c = chunk[i]!;
        if (inString) {
          if (escaped) escaped = false;
          else if (c === BACKSLASH) escaped = true;
          else if (c === QUOTE) {
            inString = false;
            if (keyBytes) {
              key = keyText(keyBytes);
              keyBytes = undefined;
            }
            continue;
          }
          if (keyBytes && keyBytes.length <= MAX_KEY_BYTES) keyBytes.push(c);
          continue;
        }
        switch (c) {
          case QUOTE:
            inString = true;
            if (expectKey && depth === 1) {
              keyBytes = [];
              expectKey = false;
            }
            break;
          case OPEN_OBJECT:
          case OPEN_ARRAY:
            depth++;
            if (depth === 1 && c === OPEN_OBJECT) topIsObject = expectKey = true;
            break;
          case CLOSE_OBJECT:
          case CLOSE_ARRAY:
            if (depth === 1 && value) {
              keep(chunk.subarray(from, i));
              if (value) usageRead();
            }
            depth--;
            break;
          case COMMA:
            if (depth === 1 && topIsObject) {
              if (value) {
                keep(chunk.subarray(from, i));
                if (value) usageRead();
              }
              expectKey = true;
            }
            break;
          case COLON:
            if (depth === 1 && topIsObject && key === "usage") {
              value = [];
              valueBytes = 0;
              from = i + 1;
            }
            key = "";
            break;
        }
      }
      if (value) keep(chunk.subarray(from));
      return chunk;
    },
    end: () => "",
    streamedTokens: () => Math.ceil(bytes / BYTES_PER_TOKEN),
  };
}

/** A key's text from its raw bytes (escapes included); "" when it is too long to be `usage`. */
function keyText(raw: number[]): string {
  if (raw.length > MAX_KEY_BYTES) return "";
  try {
    return JSON.parse(`"${Buffer.from(raw).toString("utf8")}"`) as string;
  } catch {
    return "";
  }
}
