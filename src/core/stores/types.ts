/**
 * The record store: Tollgate's durable records (API keys now; resource owners
 * later). `sqlite` by default, `postgres` for several replicas. Every method is
 * safe to call from several processes sharing the same database.
 */

/** An API key as stored: never the key itself, only its SHA-256 hash. */
export interface ApiKeyRecord {
  /** Public identifier (`key_...`), safe to print and log. */
  readonly id: string;
  /** Hex SHA-256 of the full key. */
  readonly hash: string;
  /** The first characters of the key (`tg_abcd`), to help a human recognise it. */
  readonly prefix: string;
  readonly principal: string;
  readonly attributes: Readonly<Record<string, readonly string[]>>;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /** Milliseconds since the epoch; absent = never expires. */
  readonly expiresAt?: number | undefined;
  /** Milliseconds since the epoch; absent = active. */
  readonly revokedAt?: number | undefined;
  /** A human's label for the key (`ci-bot`); absent when none was given. */
  readonly name?: string | undefined;
  /** Limits of this key, on top of its principal's quota; absent when none. */
  readonly limits?: readonly KeyLimit[] | undefined;
}

/** The periods a limit counts over; `month` is the UTC calendar month. */
export type LimitPeriod = "second" | "minute" | "hour" | "day" | "month";

/**
 * A limit as the config and per-key limits write it: requests, LLM tokens
 * (from `usage`) or spend (in `pricing.currency`) per period.
 */
export type KeyLimit =
  | { readonly requests: number; readonly period: LimitPeriod }
  | { readonly tokens: number; readonly period: LimitPeriod }
  | { readonly spend: number; readonly period: LimitPeriod };

/** A page of keys, newest first: {@link RecordStore.pageApiKeys}. */
export interface ApiKeyPageQuery {
  /** Only this principal's keys. */
  readonly principal?: string | undefined;
  /** Most keys on the page (1 or more). */
  readonly limit: number;
  /** The id of the last key of the previous page: this page holds the keys after it. */
  readonly after?: string | undefined;
}

export interface ApiKeyPage {
  readonly keys: ApiKeyRecord[];
  /** True when more keys follow the last one of this page. */
  readonly hasMore: boolean;
}

/** What usage can be grouped by. */
export type UsageGroup = "principal" | "key" | "model" | "upstream" | "day" | "hour";

export const USAGE_GROUPS: readonly UsageGroup[] = ["principal", "key", "model", "upstream", "day", "hour"];

/** A question to {@link RecordStore.usage}. */
export interface UsageQuery {
  /** The fields each row is grouped by (none: one row of totals). */
  readonly groupBy: readonly UsageGroup[];
  /** Inclusive: an hour counts when its start is at or after `from`. */
  readonly from: Date;
  /** Exclusive: an hour counts when its start is before `to`. */
  readonly to: Date;
  /** Only this principal's usage. */
  readonly principal?: string | undefined;
}

/**
 * One row of usage: the `groupBy` fields under their own names, then the
 * sums. Exactly the fields of the admin API's usage rows (DESIGN.md).
 */
export interface UsageRow {
  principal?: string;
  /** The API key's id; null for requests made with other credentials. */
  key?: string | null;
  /** The model the request named (after aliases); null when it named none. */
  model?: string | null;
  /** The upstream's name (`default` with a single `upstream:`). */
  upstream?: string;
  /** `YYYY-MM-DD`, UTC. */
  day?: string;
  /** The hour's start, ISO 8601 UTC (`2026-12-06T05:00:00.000Z`). */
  hour?: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  /** In `pricing.currency`. */
  cost: number;
}

/**
 * Usage to add to one hour's row ({@link RecordStore.recordUsage}): the
 * numbers are added to what the row holds, so every replica's additions sum.
 */
export interface UsageDelta {
  /** Start of the UTC hour, milliseconds since the epoch. */
  readonly hour: number;
  readonly principal: string;
  /** The API key's id; absent for other credentials. */
  readonly keyId?: string | undefined;
  /** Absent when the request named no model. */
  readonly model?: string | undefined;
  readonly upstream: string;
  readonly requests: number;
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** Cost in billionths of the currency (an integer, so sums are exact). */
  readonly costNanos: number;
}

/** Who created a resource through the gateway: recorded from the create response's `id`. */
export interface OwnerRecord {
  /** Resource type (`file`, `vector_store`, ...). */
  readonly type: string;
  /** The upstream's identifier (`file-abc123`). */
  readonly id: string;
  readonly principal: string;
  /** The creator's attributes at creation time. */
  readonly attributes: Readonly<Record<string, readonly string[]>>;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /**
   * The name of the upstream it was created through (`upstreams:`): later
   * requests on it go there. Absent for resources recorded before, or
   * created without a recorded upstream (then routed as any request without a model).
   */
  readonly upstream?: string | undefined;
}

export interface RecordStore {
  /** `sqlite` or `postgres`. */
  readonly kind: string;
  /** Stores a new key. Rejects if the id or hash already exists. */
  insertApiKey(record: ApiKeyRecord): Promise<void>;
  /**
   * The key with this hash, revoked or not; undefined when unknown. A
   * secret replaced by {@link rotateApiKey} within its grace finds its key,
   * with `expiresAt` no later than the end of the grace.
   */
  findApiKeyByHash(hash: string): Promise<ApiKeyRecord | undefined>;
  /** All keys, oldest first, revoked ones included. */
  listApiKeys(): Promise<ApiKeyRecord[]>;
  /** One page of keys, newest first (ties by id), revoked and expired ones included. */
  pageApiKeys(query: ApiKeyPageQuery): Promise<ApiKeyPage>;
  /** The key with this id, revoked or not; undefined when unknown. */
  getApiKey(id: string): Promise<ApiKeyRecord | undefined>;
  /** Marks the key with this id or hash revoked; resolves to the record, or undefined when unknown. */
  revokeApiKey(idOrHash: string, at: number): Promise<ApiKeyRecord | undefined>;
  /**
   * Gives the unrevoked key `id` a new secret (its hash and prefix). The
   * previous secret keeps authenticating until `previousValidUntil`
   * (milliseconds since the epoch; absent: it stops at once), then stops;
   * a later rotation ends any older secret at once. Resolves to the updated
   * record, or undefined when no unrevoked key has this id.
   */
  rotateApiKey(id: string, secret: { hash: string; prefix: string }, previousValidUntil: number | undefined): Promise<ApiKeyRecord | undefined>;
  /**
   * Stores `record` only when this store has never held an API key (revoked
   * and expired keys count, as does a key created and later removed), as one
   * transaction that several processes may run at once: exactly one of them
   * stores its record. True when `record` was stored.
   */
  insertFirstApiKey(record: ApiKeyRecord): Promise<boolean>;
  /** Number of keys that are neither revoked nor expired at `now`. */
  countActiveApiKeys(now: number): Promise<number>;
  /** Records (or replaces) the owner of a resource. */
  putOwner(record: OwnerRecord): Promise<void>;
  /** The owner of `type`/`id`; undefined when the gateway never saw it created. */
  findOwner(type: string, id: string): Promise<OwnerRecord | undefined>;
  /** The owners of several resources of one type at once (list filtering), keyed by id; unknown ids are absent. */
  findOwners(type: string, ids: readonly string[]): Promise<Map<string, OwnerRecord>>;
  /** Forgets the owner of a deleted resource; true when there was one. */
  deleteOwner(type: string, id: string): Promise<boolean>;
  /** Adds each delta to its hour's row (created at zero), in one transaction. */
  recordUsage(deltas: readonly UsageDelta[]): Promise<void>;
  /** Usage summed over `query`'s window, grouped as asked, ordered by the group fields. */
  usage(query: UsageQuery): Promise<UsageRow[]>;
  /** Readiness (GET /ready): resolves when the store takes a write (a probe row rewritten), rejects otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
