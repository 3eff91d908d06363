import { InvalidParameterError, NotFoundError, StoreUnavailableError } from "../core/errors.js";
import { ApiKeyInputError, apiKeyStatus, createApiKey, rotateApiKey, UnknownApiKeyError, type ApiKeyStatus } from "../core/keys.js";
import type { ApiKeyRecord, KeyLimit, RecordStore } from "../core/stores/types.js";
import { attributesField, durationField, integerParam, onlyFields, onlyParams, optionalString, requiredString, type JsonObject } from "./input.js";

/**
 * The keys endpoints of the admin API (`/admin/v1/keys...`), over the same
 * record store and key functions as `tollgate keys` (core/keys.ts): a key
 * made here works with the CLI and the other way round.
 */

/** A key as the admin API shows it: never its secret or its hash. */
export interface KeyView {
  object: "api_key";
  id: string;
  principal: string;
  attributes: Readonly<Record<string, readonly string[]>>;
  name: string | null;
  /** The first characters of the secret, as `tollgate keys list` shows them, to recognise a key. */
  prefix: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  status: ApiKeyStatus;
  /** Limits on top of the principal's quota (`[]`: none). */
  limits: readonly KeyLimit[];
}

/** Most keys one page of `GET /admin/v1/keys` holds, and its default. */
export const MAX_PAGE = 1000;
export const DEFAULT_PAGE = 100;

/** The JSON form of a record at `now`. */
export function keyView(record: ApiKeyRecord, now: number): KeyView {
  return {
    object: "api_key",
    id: record.id,
    principal: record.principal,
    attributes: record.attributes,
    name: record.name ?? null,
    prefix: record.prefix,
    created_at: isoTime(record.createdAt),
    expires_at: record.expiresAt === undefined ? null : isoTime(record.expiresAt),
    revoked_at: record.revokedAt === undefined ? null : isoTime(record.revokedAt),
    status: apiKeyStatus(record, now),
    limits: record.limits ?? [],
  };
}

/** The keys endpoints over `store`; `now` is the clock (tests). */
export function createKeysApi(store: RecordStore | undefined, now: () => number = Date.now) {
  function records(): RecordStore {
    // Authentication may be by another provider (JWT, introspection) without a record store for keys.
    if (!store) throw new StoreUnavailableError("No record store is configured for API keys");
    return store;
  }

  async function find(id: string): Promise<ApiKeyRecord> {
    const record = await records().getApiKey(id);
    if (!record) throw new NotFoundError(`No API key with id ${JSON.stringify(id)}`, "key_not_found");
    return record;
  }

  return {
    /** POST /admin/v1/keys: 201 with the key's secret, the only time it is shown. */
    async create(body: JsonObject) {
      onlyFields(body, ["principal", "attributes", "name", "expires_in", "limits"]);
      // Every field is checked before the store is touched: nothing half-created.
      const principal = requiredString(body, "principal");
      const attributes = attributesField(body);
      const name = optionalString(body, "name");
      const expiresIn = durationField(body, "expires_in");
      const limits = body.limits === undefined || body.limits === null ? undefined : body.limits;
      if (limits !== undefined && !Array.isArray(limits)) throw new InvalidParameterError("limits", "limits must be a list such as [{\"spend\": 25, \"period\": \"month\"}]");
      const at = now();
      const { key, record } = await createApiKey(records(), { principal, attributes, name, limits, expiresAt: expiresIn === undefined ? undefined : at + expiresIn, now: at }).catch(inputError);
      return { ...keyView(record, at), key };
    },

    /** GET /admin/v1/keys: newest first, revoked and expired included, `after` = the last id of the previous page. */
    async list(query: URLSearchParams) {
      onlyParams(query, ["principal", "limit", "after"]);
      const limit = integerParam(query, "limit", 1, MAX_PAGE, DEFAULT_PAGE);
      const principal = query.get("principal");
      const after = query.get("after");
      if (after !== null && !(await records().getApiKey(after))) throw new InvalidParameterError("after", `after must be the id of a key in the list; ${JSON.stringify(after)} is not`);
      const page = await records().pageApiKeys({ principal: principal ?? undefined, limit, after: after ?? undefined });
      const at = now();
      return { object: "list", data: page.keys.map((r) => keyView(r, at)), has_more: page.hasMore };
    },

    /** GET /admin/v1/keys/{id}. */
    async get(id: string) {
      return keyView(await find(id), now());
    },

    /** POST /admin/v1/keys/{id}/rotate: a new secret; the old one works for `grace` (default 0). */
    async rotate(id: string, body: JsonObject) {
      onlyFields(body, ["grace"]);
      const graceMs = durationField(body, "grace") ?? 0;
      const record = await find(id);
      if (record.revokedAt !== undefined) throw new InvalidParameterError("id", `API key ${id} is revoked and cannot be rotated`);
      const at = now();
      const rotated = await rotateApiKey(records(), id, { graceMs, now: at }).catch((err: unknown) => {
        if (err instanceof UnknownApiKeyError) throw new NotFoundError(`No API key with id ${JSON.stringify(id)}`, "key_not_found");
        return inputError(err);
      });
      return { ...keyView(rotated.record, at), key: rotated.key };
    },

    /** DELETE /admin/v1/keys/{id}: revoked (the gateway's key cache forgets it within a second). */
    async revoke(id: string) {
      await find(id);
      await records().revokeApiKey(id, now());
      return { id, object: "api_key", deleted: true };
    },
  };
}

export type KeysApi = ReturnType<typeof createKeysApi>;

/** A field core/keys.ts refused (`limits[0].period`): 400 naming it. */
function inputError(err: unknown): never {
  if (err instanceof ApiKeyInputError) throw new InvalidParameterError(err.param, err.message);
  throw err;
}

function isoTime(ms: number): string {
  return new Date(ms).toISOString();
}

