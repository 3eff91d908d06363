import type { IncomingMessage } from "node:http";
import { Transform, type Readable, type TransformCallback } from "node:stream";
import type { BodyLimits } from "./body.js";
import { parseJsonWithin } from "./json.js";
import { jsonMember, readJsonBody, withJsonMember, type BufferedBody } from "./request-body.js";

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
 */

/** Largest JSON response read for its `usage`; a larger one passes through uncounted. */
export const MAX_METERED_JSON_BYTES = 16 * 1024 * 1024;

/** Tokens in a `usage` object: `total_tokens`, else prompt + completion (Chat) or input + output (Responses API). */
export function usageTotal(usage: unknown): number | undefined {
  if (!usage || typeof usage !== "object") return undefined;
  const u = usage as Record<string, unknown>;
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : undefined);
  const total = n(u.total_tokens);
  if (total !== undefined) return total;
  const parts = [n(u.prompt_tokens) ?? n(u.input_tokens), n(u.completion_tokens) ?? n(u.output_tokens)];
  return parts.some((p) => p !== undefined) ? (parts[0] ?? 0) + (parts[1] ?? 0) : undefined;
}

/** `usage` of a response object, or of the `response` inside a Responses API event (`response.completed`). */
function usageOf(json: unknown): number | undefined {
  if (!json || typeof json !== "object") return undefined;
  const o = json as { usage?: unknown; response?: { usage?: unknown } };
  return usageTotal(o.usage) ?? usageTotal(o.response?.usage);
}

/** What the gateway does to a request of a client with a token budget. */
export interface UsagePlan {
  /** The body to forward instead of the client's (with `stream_options.include_usage`), when it was rewritten or read. */
  readonly body: BufferedBody | undefined;
  /** True when the gateway asked for usage the client did not ask for: its chunk is removed from the stream. */
  readonly stripUsageChunk: boolean;
}

const NOTHING: UsagePlan = { body: undefined, stripUsageChunk: false };

/** Chat Completions and (legacy) Completions, under any prefix (`/v1/`, Llama Stack's `/v1/openai/v1/`). */
function isStreamableInference(method: string | undefined, path: string): boolean {
  return method === "POST" && (path.endsWith("/chat/completions") || path.endsWith("/completions"));
}

/**
 * Before forwarding: for a streamed completion, makes sure the upstream will
 * report usage. `body` is the buffered body when an earlier stage read it.
 */
export async function prepareUsage(raw: IncomingMessage, path: string, body: BufferedBody | undefined, limits: BodyLimits): Promise<UsagePlan> {
  if (!isStreamableInference(raw.method, path)) return NOTHING;
  const read = body ?? (await readJsonBody(raw, limits));
  if (jsonMember(read, "stream") !== true) return { body: read, stripUsageChunk: false };
  const given = jsonMember(read, "stream_options");
  const options = given && typeof given === "object" && !Array.isArray(given) ? (given as Record<string, unknown>) : {};
  if (options.include_usage === true) return { body: read, stripUsageChunk: false };
  return { body: withJsonMember(read, "stream_options", { ...options, include_usage: true }), stripUsageChunk: true };
}

/**
 * Wraps a response body: passes it on (an event stream event by event, as
 * soon as each is complete) and calls `record` once with the tokens its
 * `usage` reports. `contentType` picks JSON or SSE; anything else passes
 * through untouched.
 */
export function meterUsage(
  body: Readable,
  contentType: string | undefined,
  plan: { stripUsageChunk: boolean },
  record: (tokens: number) => void,
): Readable {
  const type = (contentType ?? "").split(";")[0]!.trim().toLowerCase();
  let meter: Transform;
  if (type === "text/event-stream") meter = sseMeter(plan.stripUsageChunk, record);
  else if (type === "application/json" || type.endsWith("+json")) meter = jsonMeter(record);
  else return body;
  body.on("error", (err) => meter.destroy(err));
  // The client went away (the meter is destroyed): stop reading the upstream too.
  meter.once("close", () => {
    if (!body.readableEnded) body.destroy();
  });
  return body.pipe(meter);
}

function jsonMeter(record: (tokens: number) => void): Transform {
  const chunks: Buffer[] = [];
  let size = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, callback: TransformCallback) {
      if (size <= MAX_METERED_JSON_BYTES) {
        size += chunk.length;
        if (size <= MAX_METERED_JSON_BYTES) chunks.push(chunk);
        else chunks.length = 0;
      }
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      if (size > 0 && size <= MAX_METERED_JSON_BYTES) {
        // Not JSON after all (or nested past what the gateway reads): nothing to count.
        const tokens = usageOf(parseJsonWithin(Buffer.concat(chunks, size).toString("utf8")));
        if (tokens !== undefined) record(tokens);
      }
      callback();
    },
  });
}

/** Events end at a blank line (`\n\n`, `\r\n\r\n`, `\r\r`: the SSE spec allows all three). */
const EVENT_END = /\r\n\r\n|\n\n|\r\r/g;

function sseMeter(strip: boolean, record: (tokens: number) => void): Transform {
  let pending = "";
  let tokens: number | undefined;
  const decoder = new TextDecoder();

  /** The event as it should reach the client ("" to drop it); notes its usage. */
  function pass(event: string): string {
    if (!event.includes('"usage"')) return event;
    const lines = event.split(/\r\n|\n|\r/);
    const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
    const json = parseJsonWithin(data);
    if (json === undefined) return event;
    const used = usageOf(json);
    if (used === undefined) return event;
    tokens = used;
    if (!strip) return event;
    const chunk = json as { choices?: unknown; usage?: unknown };
    // The extra chunk the gateway asked for: no choices, only usage. Dropped whole.
    if (Array.isArray(chunk.choices) && chunk.choices.length === 0) return "";
    // A server that puts usage on a content chunk: keep the content, remove the usage.
    const { usage: _usage, ...rest } = chunk;
    const others = lines.filter((l) => !l.startsWith("data:"));
    return [...others, `data: ${JSON.stringify(rest)}`].join("\n");
  }

  return new Transform({
    transform(chunk: Buffer, _enc, callback: TransformCallback) {
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
      callback(null, out === "" ? undefined : out);
    },
    flush(callback: TransformCallback) {
      pending += decoder.decode();
      const rest = pending === "" ? "" : pass(pending);
      if (tokens !== undefined) record(tokens);
      callback(null, rest === "" ? undefined : rest);
    },
  });
}
