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
  /** Readiness (GET /ready): resolves when the store takes a write (a probe row rewritten), rejects otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
