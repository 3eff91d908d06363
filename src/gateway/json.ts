import { JsonTooDeepError } from "../core/errors.js";

/**
 * JSON the gateway reads without building it: a request body is scanned once
 * (syntax, nesting depth, where each top-level member's value lies) and only
 * the few members the gateway needs (`model`, `stream`, `stream_options`) are
 * parsed, so a 95 MB chat request is held once, as the bytes that came in,
 * never also as a string, an object graph and a re-serialised copy.
 *
 * Nesting is bounded before anything is parsed: JSON nested 10,000 deep is
 * cheap to send and blows the stack of recursive code downstream
 * (`JSON.stringify`, validators, Python's `json` raises RecursionError near
 * 1,000). The scan is iterative and ignores brackets inside strings.
 */

/**
 * Deepest nesting of arrays and objects accepted, in a request body or an
 * upstream answer the gateway reads. 128 leaves room for the deepest JSON
 * Schemas clients send in `tools` and `response_format` (a few dozen levels).
 */
export const MAX_JSON_DEPTH = 128;

/** Where a value lies in the bytes: `[start, end)`. */
export interface Span {
  readonly start: number;
  readonly end: number;
}

/** What {@link scanJson} found. */
export interface JsonScan {
  /** True when `JSON.parse` would accept the text. */
  readonly valid: boolean;
  /**
   * For a JSON object: each top-level member's value, by its decoded name
   * (of duplicates, the last one, as `JSON.parse` and Python's `json` keep).
   * Undefined for anything else.
   */
  readonly members: ReadonlyMap<string, Span> | undefined;
  /** For a JSON object: the offset just after its `{`. */
  readonly open: number;
}

const INVALID: JsonScan = { valid: false, members: undefined, open: -1 };

// Scanner states.
const VALUE = 0; // a value must come
const FIRST_VALUE = 1; // just after `[`: a value or `]`
const FIRST_KEY = 2; // just after `{`: a key or `}`
const KEY = 3; // after `,` in an object: a key
const COLON = 4;
const AFTER = 5; // after a value: `,` or the container's close
const END = 6; // the top-level value is complete

const OBJECT = 1;
const ARRAY = 2;

/**
 * Scans `bytes` as JSON (RFC 8259, as strictly as `JSON.parse`) without
 * building it. Throws {@link JsonTooDeepError} (400) as soon as nesting goes
 * past `maxDepth`, whatever follows.
 *
 * @example const { valid, members } = scanJson(Buffer.from('{"model":"m1"}')); // members.get("model") -> {start: 9, end: 13}
 */
export function scanJson(bytes: Uint8Array, maxDepth = MAX_JSON_DEPTH): JsonScan {
  const n = bytes.length;
  const stack = new Uint8Array(maxDepth + 1);
  let depth = 0;
  let state = VALUE;
  let i = 0;
  let open = -1;
  let members: Map<string, Span> | undefined;
  let keyStart = 0;
  let keyEnd = 0;
  let valueStart = 0;

  for (;;) {
    // Whitespace (RFC 8259 §2): space, tab, LF, CR.
    while (i < n) {
      const b = bytes[i]!;
      if (b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) break;
      i++;
    }
    if (i >= n) return state === END ? { valid: true, members, open } : INVALID;
    const c = bytes[i]!;
    switch (state) {
      case END:
        return INVALID;
      case FIRST_KEY:
        if (c === 0x7d /* } */) {
          i++;
          closed();
          continue;
        }
      // fall through: a key
      case KEY: {
        if (c !== 0x22) return INVALID;
        const end = stringEnd(bytes, i);
        if (end < 0) return INVALID;
        if (depth === 1) {
          keyStart = i;
          keyEnd = end;
        }
        i = end;
        state = COLON;
        continue;
      }
      case COLON:
        if (c !== 0x3a /* : */) return INVALID;
        i++;
        state = VALUE;
        continue;
      case AFTER:
        if (c === 0x2c /* , */) {
          i++;
          state = stack[depth - 1] === OBJECT ? KEY : VALUE;
          continue;
        }
        if ((c === 0x7d && stack[depth - 1] === OBJECT) || (c === 0x5d && stack[depth - 1] === ARRAY)) {
          i++;
          closed();
          continue;
        }
        return INVALID;
      case FIRST_VALUE:
        if (c === 0x5d /* ] */) {
          i++;
          closed();
          continue;
        }
      // fall through: a value
      case VALUE: {
        if (depth === 1 && stack[0] === OBJECT) valueStart = i;
        if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
          if (depth >= maxDepth) throw new JsonTooDeepError(maxDepth);
          stack[depth++] = c === 0x7b ? OBJECT : ARRAY;
          i++;
          if (depth === 1 && c === 0x7b) {
            open = i;
            members = new Map();
          }
          state = c === 0x7b ? FIRST_KEY : FIRST_VALUE;
          continue;
        }
        const end = c === 0x22 ? stringEnd(bytes, i) : c === 0x2d || (c >= 0x30 && c <= 0x39) ? numberEnd(bytes, i) : literalEnd(bytes, i);
        if (end < 0) return INVALID;
        i = end;
        valueDone();
        continue;
      }
    }
  }

  /** A value just ended at `i`: note it when it is a top-level member's. */
  function valueDone(): void {
    if (depth === 0) {
      state = END;
      return;
    }
    if (depth === 1 && stack[0] === OBJECT) members!.set(stringText(bytes, keyStart, keyEnd), { start: valueStart, end: i });
    state = AFTER;
  }

  /** A container just closed (`i` is past its bracket): it was a value. */
  function closed(): void {
    depth--;
    valueDone();
  }
}

/**
 * The decoded text of the valid JSON string at `[start, end)` (quotes
 * included), a key or a value; escapes such as `"mod\u0065l"` count as
 * what they mean.
 */
function stringText(bytes: Uint8Array, start: number, end: number): string {
  const raw = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  // Nothing to unescape (the usual key or model name): its bytes as they are, without the parser.
  for (let i = start + 1; i < end - 1; i++) if (raw[i] === BACKSLASH) return JSON.parse(raw.toString("utf8", start, end)) as string;
  return raw.toString("utf8", start + 1, end - 1);
}

/** Offset after the string starting at `i` (its opening quote), or -1 when it is not a valid JSON string. */
function stringEnd(bytes: Uint8Array, i: number): number {
  const n = bytes.length;
  let j = i + 1;
  while (j < n) {
    const b = bytes[j]!;
    if (b === 0x22) return j + 1;
    if (b < 0x20) return -1; // control characters must be escaped
    if (b === 0x5c) {
      const e = bytes[j + 1];
      if (e === 0x75 /* u */) {
        for (let k = j + 2; k < j + 6; k++) if (k >= n || !isHex(bytes[k]!)) return -1;
        j += 6;
      } else if (e === 0x22 || e === 0x5c || e === 0x2f || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) j += 2;
      else return -1;
      continue;
    }
    j++;
  }
  return -1;
}

function isHex(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
}

function isDigit(b: number | undefined): boolean {
  return b !== undefined && b >= 0x30 && b <= 0x39;
}

/** Offset after the number starting at `i` (`-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?`), or -1. */
function numberEnd(bytes: Uint8Array, i: number): number {
  let j = i;
  if (bytes[j] === 0x2d) j++;
  if (bytes[j] === 0x30) j++;
  else if (isDigit(bytes[j])) while (isDigit(bytes[j])) j++;
  else return -1;
  if (bytes[j] === 0x2e) {
    j++;
    if (!isDigit(bytes[j])) return -1;
    while (isDigit(bytes[j])) j++;
  }
  if (bytes[j] === 0x65 || bytes[j] === 0x45) {
    j++;
    if (bytes[j] === 0x2b || bytes[j] === 0x2d) j++;
    if (!isDigit(bytes[j])) return -1;
    while (isDigit(bytes[j])) j++;
  }
  return j;
}

const LITERALS = [Buffer.from("true"), Buffer.from("false"), Buffer.from("null")];

/** Offset after `true`, `false` or `null` at `i`, or -1. */
function literalEnd(bytes: Uint8Array, i: number): number {
  for (const literal of LITERALS) {
    if (literal[0] !== bytes[i]) continue;
    for (let k = 1; k < literal.length; k++) if (bytes[i + k] !== literal[k]) return -1;
    return i + literal.length;
  }
  return -1;
}

/** The value of a top-level member found by {@link scanJson}, parsed alone; undefined when absent. */
export function memberValue(bytes: Buffer, scan: JsonScan, name: string): unknown {
  const span = scan.members?.get(name);
  if (span === undefined) return undefined;
  const { start, end } = span;
  // The usual members (`"stream": true`, a model's name) read without the parser.
  switch (bytes[start]) {
    case T:
      if (end - start === 4) return true;
      break;
    case F:
      if (end - start === 5) return false;
      break;
    case QUOTE:
      return stringText(bytes, start, end);
  }
  return JSON.parse(bytes.toString("utf8", start, end));
}

const T = 0x74;
const F = 0x66;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * `JSON.parse(text)` for an answer the gateway inspects (an upstream's list,
 * create answer or usage): undefined when it is not JSON or nests deeper than
 * `maxDepth` (which recursive code further on could not handle).
 */
export function parseJsonWithin(text: string, maxDepth = MAX_JSON_DEPTH): unknown {
  if (nestingExceeds(text, maxDepth)) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** True when brackets outside strings in `text` nest deeper than `maxDepth`. */
export function nestingExceeds(text: string, maxDepth: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) return true;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return false;
}
