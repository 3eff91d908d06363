import type { IncomingMessage } from "node:http";
import { BadRequestError, InvalidParameterError, PayloadTooLargeError } from "../core/errors.js";
import { parseDuration } from "../core/keys.js";

/**
 * Reading what an admin client sent: a small JSON body and query fields,
 * each checked with the name of the field in the error (`param`), before
 * anything is written.
 */

/** Largest admin request body read (a key's attributes and limits are far smaller). */
export const MAX_ADMIN_BODY_BYTES = 64 * 1024;

/** A JSON object as sent; its fields are checked one by one by the readers below. */
export type JsonObject = Readonly<Record<string, unknown>>;

/**
 * The request's JSON object body; `{}` when there is none. Anything else
 * (not JSON, not an object) is a 400, too large a 413. The Content-Type is
 * not insisted on: `curl -d '{...}'` sends form-urlencoded, and the body is
 * read as JSON whatever it says.
 */
export async function readJsonBody(raw: IncomingMessage, maxBytes = MAX_ADMIN_BODY_BYTES): Promise<JsonObject> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of raw as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) throw new PayloadTooLargeError(maxBytes);
    chunks.push(chunk);
  }
  if (size === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new BadRequestError("The request body is not valid JSON", "invalid_json");
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new BadRequestError("The request body must be a JSON object", "invalid_json");
  return parsed as JsonObject;
}

/** Refuses fields the endpoint does not know: a typo (`expire_in`) must not be silently ignored. */
export function onlyFields(body: JsonObject, allowed: readonly string[]): void {
  for (const name of Object.keys(body)) {
    if (!allowed.includes(name)) throw new InvalidParameterError(name, `Unknown field ${JSON.stringify(name)}; expected one of: ${allowed.join(", ")}`);
  }
}

/** A field that must be a non-empty string. */
export function requiredString(body: JsonObject, name: string): string {
  const value = own(body, name);
  if (typeof value !== "string" || value.trim() === "") throw new InvalidParameterError(name, `${name} is required: a non-empty string`);
  return value;
}

/** A field that may be absent (or null); when present a non-empty string. */
export function optionalString(body: JsonObject, name: string): string | undefined {
  const value = own(body, name);
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string" || value.trim() === "") throw new InvalidParameterError(name, `${name} must be a non-empty string`);
  return value;
}

/** `{name: [values]}` with string values; absent: `{}`. */
export function attributesField(body: JsonObject, name = "attributes"): Record<string, string[]> {
  const value = own(body, name);
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) throw new InvalidParameterError(name, `${name} must be an object of string lists, e.g. {"roles": ["admin"]}`);
  // A Map, as parseAttributes does: `__proto__` stays an ordinary attribute name.
  const out = new Map<string, string[]>();
  for (const [attr, values] of Object.entries(value)) {
    if (attr === "" || !Array.isArray(values) || !values.every((v) => typeof v === "string" && v !== "")) {
      throw new InvalidParameterError(`${name}.${attr}`, `${name}.${attr} must be a list of non-empty strings`);
    }
    out.set(attr, [...new Set(values as string[])]);
  }
  return Object.fromEntries(out);
}

/** A duration field (`30d`, `1h`) in milliseconds; absent: undefined. */
export function durationField(body: JsonObject, name: string): number | undefined {
  const value = own(body, name);
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw new InvalidParameterError(name, `${name} must be a duration such as 45s, 15m, 12h, 30d, 2w`);
  try {
    return parseDuration(value);
  } catch (err) {
    throw new InvalidParameterError(name, (err as Error).message);
  }
}

/** An ISO 8601 time given in a query field, in ms since the epoch; absent: undefined. */
export function timeParam(query: URLSearchParams, name: string): number | undefined {
  const value = query.get(name);
  if (value === null) return undefined;
  // Date.parse accepts far more than ISO 8601 ("March 7"): only the ISO shapes are taken.
  const ms = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/.test(value) ? Date.parse(value) : Number.NaN;
  if (!Number.isFinite(ms)) throw new InvalidParameterError(name, `${name} must be an ISO 8601 time such as 2026-01-31T00:00:00Z`);
  return ms;
}

/** A whole number in a query field between `min` and `max`; absent: `fallback`. */
export function integerParam(query: URLSearchParams, name: string, min: number, max: number, fallback: number): number {
  const value = query.get(name);
  if (value === null) return fallback;
  const n = /^\d{1,9}$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= min && n <= max)) throw new InvalidParameterError(name, `${name} must be a whole number from ${min} to ${max}`);
  return n;
}

/** Refuses query fields the endpoint does not know. */
export function onlyParams(query: URLSearchParams, allowed: readonly string[]): void {
  for (const name of query.keys()) {
    if (!allowed.includes(name)) throw new InvalidParameterError(name, `Unknown query parameter ${JSON.stringify(name)}; expected one of: ${allowed.join(", ") || "none"}`);
  }
}

function own(body: JsonObject, name: string): unknown {
  return Object.prototype.hasOwnProperty.call(body, name) ? body[name] : undefined;
}
