import { createHash, randomBytes } from "node:crypto";
import { LIMIT_SCHEMAS } from "./quota/limits.js";
import type { ApiKeyRecord, KeyLimit, RecordStore } from "./stores/types.js";

/**
 * Tollgate's own API keys: how they are made, hashed and described.
 *
 * A key is `tg_` + 43 characters of base64url (32 random bytes, 256 bits):
 * far beyond guessing, so a plain SHA-256 of it is a safe thing to store and
 * index (a slow password hash buys nothing against a 256-bit secret and
 * would cost every request). The key itself is shown once, at creation,
 * and never stored.
 */

/** Every key starts with this, so a leaked one is recognisable (secret scanners, logs). */
export const API_KEY_PREFIX = "tg_";

/** The exact shape of a key `createApiKey` issues. */
export const API_KEY_PATTERN = /^tg_[A-Za-z0-9_-]{43}$/;

/** How many leading characters of a key are kept in the record, to help a human recognise it. */
const PREFIX_LENGTH = 10;

/** The longest `parseDuration` accepts: far enough for any real expiry, short of `Date`'s range. */
const MAX_DURATION_MS = 100 * 365 * 24 * 3600 * 1000;

const UNIT_MS: Readonly<Record<string, number>> = {
  s: 1000,
  m: 60 * 1000,
  h: 3600 * 1000,
  d: 24 * 3600 * 1000,
  w: 7 * 24 * 3600 * 1000,
};

/**
 * The name of the record stores' `tollgate_meta` row that says the store has
 * held an API key: from then on no first admin key is ever created.
 */
export const KEYS_ISSUED_MARKER = "api_keys_issued";

/** A key's state at a moment, as `tollgate keys list` shows it. */
export type ApiKeyStatus = "active" | "revoked" | "expired";

/** The longest key name accepted. */
export const MAX_KEY_NAME_LENGTH = 200;

/**
 * A key's fields that cannot be stored as given: `param` names the field
 * (`principal`, `attributes.roles`, `limits[0].period`, `expires_at`), so an
 * API can answer 400 naming it. Nothing was stored.
 */
export class ApiKeyInputError extends Error {
  readonly code = "ERR_API_KEY_INPUT";
  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiKeyInputError";
  }
}

/** No unrevoked key has the id given (rotate). */
export class UnknownApiKeyError extends Error {
  readonly code = "ERR_UNKNOWN_API_KEY";
  constructor() {
    super("no such key, or it is revoked");
    this.name = "UnknownApiKeyError";
  }
}

/** Rejected by a store when a new key's id or hash is already taken. */
export class DuplicateApiKeyError extends Error {
  readonly code = "ERR_DUPLICATE_API_KEY";
  constructor(options?: ErrorOptions) {
    super("an API key with this id or hash already exists", options);
    this.name = "DuplicateApiKeyError";
  }
}

/**
 * The hex SHA-256 of a key: what the store keeps and looks keys up by.
 *
 * @example hashApiKey("tg_...") // "9f86d0...", 64 hex characters
 */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** What a new key is made of: {@link createApiKey}. */
export interface NewApiKey {
  principal: string;
  attributes?: Record<string, string[]> | undefined;
  /** A label for humans (at most {@link MAX_KEY_NAME_LENGTH} characters). */
  name?: string | undefined;
  /** Absolute milliseconds since the epoch, after `now`; absent: never expires. */
  expiresAt?: number | undefined;
  /** Limits of this key on top of its principal's quota, in the quota limits' forms. */
  limits?: readonly unknown[] | undefined;
  now?: number | undefined;
}

/**
 * Issues a new key for `principal`, stores its hash, and returns the key (to
 * show once) with its record. Invalid fields throw {@link ApiKeyInputError}
 * naming the field, and nothing is stored.
 *
 * @example
 * const { key, record } = await createApiKey(store, { principal: "alice", attributes: { roles: ["admin"] }, name: "laptop", limits: [{ spend: 25, period: "month" }] });
 */
export async function createApiKey(store: RecordStore, opts: NewApiKey): Promise<{ key: string; record: ApiKeyRecord }> {
  const now = opts.now ?? Date.now();
  if (typeof opts.principal !== "string" || opts.principal.trim() === "") {
    throw new ApiKeyInputError("principal", "the principal must be a non-empty string");
  }
  if (opts.expiresAt !== undefined && !(Number.isSafeInteger(opts.expiresAt) && opts.expiresAt > now)) {
    throw new ApiKeyInputError("expires_at", "the expiry must be a time in the future");
  }
  if (opts.name !== undefined && !(typeof opts.name === "string" && opts.name.trim() !== "" && opts.name.length <= MAX_KEY_NAME_LENGTH)) {
    throw new ApiKeyInputError("name", `the name must be a non-empty string of at most ${MAX_KEY_NAME_LENGTH} characters`);
  }
  const attributes = checkAttributes(opts.attributes ?? {});
  const limits = opts.limits === undefined ? undefined : checkLimits(opts.limits);
  const key = newSecret();
  const record = { ...newRecord(key, { principal: opts.principal, attributes, createdAt: now, expiresAt: opts.expiresAt }), name: opts.name, limits };
  await store.insertApiKey(record);
  return { key, record };
}

/**
 * Per-key limits checked against the quota limits' schema; throws
 * {@link ApiKeyInputError} naming the first bad item (`limits[1].period`).
 */
export function checkLimits(limits: readonly unknown[]): KeyLimit[] {
  if (!Array.isArray(limits)) throw new ApiKeyInputError("limits", "limits must be a list");
  return limits.map((limit, i) => {
    const units = limit && typeof limit === "object" ? Object.keys(LIMIT_SCHEMAS).filter((unit) => unit in limit) : [];
    if (units.length !== 1) {
      throw new ApiKeyInputError(`limits[${i}]`, `limits[${i}]: expected {requests|tokens|spend: N, period: second|minute|hour|day|month}`);
    }
    const parsed = LIMIT_SCHEMAS[units[0] as keyof typeof LIMIT_SCHEMAS].safeParse(limit);
    if (parsed.success) return parsed.data;
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? `limits[${i}].${issue.path.join(".")}` : `limits[${i}]`;
    throw new ApiKeyInputError(where, `${where}: ${issue.message}`);
  });
}

/**
 * Gives the key `id` a new secret and returns it (to show once) with the
 * updated record. The previous secret keeps working for `graceMs` (default 0:
 * it stops at once, within the gateway's lookup cache, under a second), then
 * stops. The id, principal, attributes and expiry stay. Throws when no
 * unrevoked key has this id.
 *
 * @example
 * const { key } = await rotateApiKey(store, "key_0123abcd", { graceMs: 3_600_000 });
 */
export async function rotateApiKey(
  store: RecordStore,
  id: string,
  opts: { graceMs?: number; now?: number } = {},
): Promise<{ key: string; record: ApiKeyRecord }> {
  const now = opts.now ?? Date.now();
  const graceMs = opts.graceMs ?? 0;
  if (!(Number.isSafeInteger(graceMs) && graceMs >= 0)) throw new ApiKeyInputError("grace", "the grace must be a whole number of milliseconds, 0 or more");
  const key = newSecret();
  const record = await store.rotateApiKey(id, { hash: hashApiKey(key), prefix: key.slice(0, PREFIX_LENGTH) }, graceMs > 0 ? now + graceMs : undefined);
  if (!record) throw new UnknownApiKeyError();
  return { key, record };
}

/**
 * The record of the first admin key (principal `admin`, `{roles: [admin]}`,
 * never expiring), stored only when the store has never held a key; see
 * {@link RecordStore.insertFirstApiKey}. Resolves to the key and its record
 * when this call created it, undefined otherwise (another process did, or
 * the store holds or held keys).
 */
export async function createFirstAdminKey(store: RecordStore, now = Date.now()): Promise<{ key: string; record: ApiKeyRecord } | undefined> {
  const key = newSecret();
  const record = newRecord(key, { principal: "admin", attributes: { roles: ["admin"] }, createdAt: now });
  return (await store.insertFirstApiKey(record)) ? { key, record } : undefined;
}

function newSecret(): string {
  return API_KEY_PREFIX + randomBytes(32).toString("base64url");
}

function newRecord(key: string, fields: { principal: string; attributes: Record<string, string[]>; createdAt: number; expiresAt?: number | undefined }): ApiKeyRecord {
  return {
    id: `key_${randomBytes(8).toString("hex")}`,
    hash: hashApiKey(key),
    prefix: key.slice(0, PREFIX_LENGTH),
    principal: fields.principal,
    attributes: fields.attributes,
    createdAt: fields.createdAt,
    expiresAt: fields.expiresAt,
    revokedAt: undefined,
  };
}

/**
 * Milliseconds in a duration written as a positive whole number and one
 * unit: `45s`, `15m`, `12h`, `30d`, `2w`. Anything else (no unit, `0d`,
 * `-1d`, `1.5h`, `1d12h`, more than 100 years) throws.
 *
 * @example parseDuration("30d") // 2_592_000_000
 */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+)\s*([smhdw])\s*$/.exec(text);
  if (!match) {
    throw new Error(`invalid duration ${JSON.stringify(text)}: expected a whole number and a unit, e.g. 45s, 15m, 12h, 30d, 2w`);
  }
  const ms = Number(match[1]) * UNIT_MS[match[2]!]!;
  if (ms <= 0) throw new Error(`invalid duration ${JSON.stringify(text)}: must be more than zero`);
  if (!(ms <= MAX_DURATION_MS)) throw new Error(`invalid duration ${JSON.stringify(text)}: at most 100 years`);
  return ms;
}

/**
 * Attributes from `name=value` pairs, as `--attr` gives them. A name given
 * several times accumulates its values, and a comma separates several values
 * in one pair: `roles=admin,user` is the same as `roles=admin` `roles=user`.
 * Values are kept in order, without duplicates; spaces around names and
 * values are dropped. The value may itself contain
 * `=` (the first one splits). A pair without `=`, with an empty name, or with
 * an empty value (`roles=`, `roles=a,,b`) throws.
 *
 * @example parseAttributes(["roles=admin,user", "teams=ml"]) // { roles: ["admin", "user"], teams: ["ml"] }
 */
export function parseAttributes(pairs: readonly string[]): Record<string, string[]> {
  // A Map, not an object literal: a name like `__proto__` must become an
  // ordinary attribute, not reach the object's prototype.
  const attributes = new Map<string, string[]>();
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq === -1) throw new Error(`invalid attribute ${JSON.stringify(pair)}: expected name=value`);
    const name = pair.slice(0, eq).trim();
    if (name === "") throw new Error(`invalid attribute ${JSON.stringify(pair)}: the name is empty`);
    const values = pair.slice(eq + 1).split(",").map((v) => v.trim());
    if (values.some((v) => v === "")) throw new Error(`invalid attribute ${JSON.stringify(pair)}: empty value`);
    const list = attributes.get(name) ?? [];
    for (const value of values) if (!list.includes(value)) list.push(value);
    attributes.set(name, list);
  }
  return Object.fromEntries(attributes);
}

/**
 * A key's state at `now`: revoked wins over expired; a key is expired from
 * the millisecond of its `expiresAt` on.
 */
export function apiKeyStatus(record: ApiKeyRecord, now: number): ApiKeyStatus {
  if (record.revokedAt !== undefined) return "revoked";
  if (record.expiresAt !== undefined && record.expiresAt <= now) return "expired";
  return "active";
}

/**
 * Attributes as read back from a store's JSON column. Anything that is not
 * an object of string lists is dropped rather than trusted: the column is
 * only ever written by {@link createApiKey}, so a mismatch means tampering
 * or corruption, and no attribute is safer than a wrong one.
 */
export function decodeAttributes(json: string): Record<string, string[]> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return {};
  }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) return {};
  const entries = Object.entries(parsed).filter(
    (entry): entry is [string, string[]] => Array.isArray(entry[1]) && entry[1].every((v) => typeof v === "string"),
  );
  return Object.fromEntries(entries);
}

function checkAttributes(attributes: Record<string, string[]>): Record<string, string[]> {
  if (!attributes || typeof attributes !== "object" || Array.isArray(attributes)) {
    throw new ApiKeyInputError("attributes", "attributes must be an object of string lists");
  }
  const entries = Object.entries(attributes);
  for (const [name, values] of entries) {
    if (name === "" || !Array.isArray(values) || !values.every((v) => typeof v === "string")) {
      throw new ApiKeyInputError(`attributes.${name}`, `attribute ${JSON.stringify(name)} must have a non-empty name and a list of strings`);
    }
  }
  return Object.fromEntries(entries.map(([name, values]) => [name, [...values]]));
}

/**
 * An API key row as either store reads it back (column names as in the
 * `tollgate_api_keys` table). Millisecond columns may arrive as strings
 * (PostgreSQL's BIGINT: pg does not risk precision); they fit a double exactly.
 */
export function apiKeyFromRow(row: Readonly<Record<string, unknown>>): ApiKeyRecord {
  const optionalNumber = (value: unknown) => (value === null || value === undefined ? undefined : Number(value));
  return {
    id: String(row.id),
    hash: String(row.hash),
    prefix: String(row.prefix),
    principal: String(row.principal),
    attributes: decodeAttributes(String(row.attributes)),
    createdAt: Number(row.created_at),
    expiresAt: optionalNumber(row.expires_at),
    revokedAt: optionalNumber(row.revoked_at),
    name: row.name === null || row.name === undefined ? undefined : String(row.name),
    limits: row.limits === null || row.limits === undefined ? undefined : decodeLimits(String(row.limits)),
  };
}

/**
 * A key's limits as read back from a store's JSON column. A column that does
 * not hold valid limits (tampering, corruption) gives a limit of zero
 * requests: the key is refused rather than let through without its limits.
 */
export function decodeLimits(json: string): KeyLimit[] {
  try {
    const parsed: unknown = JSON.parse(json);
    if (Array.isArray(parsed)) return checkLimits(parsed);
  } catch {
    // Falls through to the closed answer.
  }
  return [{ requests: 0, period: "second" }];
}

/**
 * The key a lookup by `hash` found, from a row that may hold the previous
 * secret of a rotation (`previous_hash`, `previous_valid_until`): found by
 * that secret, the key expires no later than the end of its grace.
 */
export function apiKeyForSecret(row: Readonly<Record<string, unknown>>, hash: string): ApiKeyRecord {
  const record = apiKeyFromRow(row);
  if (record.hash === hash || row.previous_valid_until === null || row.previous_valid_until === undefined) return record;
  const graceEnd = Number(row.previous_valid_until);
  return { ...record, expiresAt: record.expiresAt === undefined ? graceEnd : Math.min(record.expiresAt, graceEnd) };
}

/** The columns of an API key row both stores insert and read, in {@link apiKeyRowValues}' order. */
export const API_KEY_COLUMNS = "id, hash, prefix, principal, attributes, created_at, expires_at, revoked_at, name, limits";

/** The values of an API key row, in the column order both stores insert them ({@link API_KEY_COLUMNS}). */
export function apiKeyRowValues(record: ApiKeyRecord): (string | number | null)[] {
  return [
    record.id,
    record.hash,
    record.prefix,
    record.principal,
    JSON.stringify(record.attributes),
    record.createdAt,
    record.expiresAt ?? null,
    record.revokedAt ?? null,
    record.name ?? null,
    record.limits === undefined ? null : JSON.stringify(record.limits),
  ];
}
