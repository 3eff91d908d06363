import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import pg from "pg";
import { pino } from "pino";
import { AuthError, IdentityUnavailableError, toErrorResponse } from "../../../src/core/errors.js";
import { createApiKey, hashApiKey } from "../../../src/core/keys.js";
import type { Logger } from "../../../src/core/log.js";
import { API_KEY_CACHE_MAX_ENTRIES, createApiKeyProvider } from "../../../src/core/providers/api-key.js";
import type { AuthProvider, AuthRequest } from "../../../src/core/providers/types.js";
import { openPostgresRecordStore } from "../../../src/core/stores/postgres.js";
import { openRecordStore } from "../../../src/core/stores/index.js";
import type { RecordStore } from "../../../src/core/stores/types.js";
import { requireService } from "../../support/services.js";

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-api-key-provider-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;

/** Every log line the provider writes, at the most verbose level, kept for inspection. */
function capturingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: pino({ level: "trace" }, { write: (line: string) => void lines.push(line) }), lines };
}

/** A record store plus a count of the lookups that reached it. */
interface Fixture {
  store: RecordStore;
  /** A second connection to the same file: what another process (`tollgate keys revoke`) does. */
  other: RecordStore;
  lookups: () => number;
  clock: { now: number };
  lines: string[];
  provider(cacheTtlMs?: number, maxCacheEntries?: number): AuthProvider;
  close(): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const dbPath = join(tempRoot, `provider-${++counter}.db`);
  const real = await openRecordStore({ type: "sqlite", db_path: dbPath });
  const other = await openRecordStore({ type: "sqlite", db_path: dbPath });
  let lookups = 0;
  const store: RecordStore = {
    ...real,
    findApiKeyByHash(hash) {
      lookups++;
      return real.findApiKeyByHash(hash);
    },
  };
  const clock = { now: 1_700_000_000_000 };
  const { log, lines } = capturingLogger();
  const providers: AuthProvider[] = [];
  return {
    store,
    other,
    lookups: () => lookups,
    clock,
    lines,
    provider(cacheTtlMs = 500, maxCacheEntries?: number) {
      const p = createApiKeyProvider(
        { type: "api_key", cache_ttl_ms: cacheTtlMs },
        { store, log, now: () => clock.now, ...(maxCacheEntries ? { maxCacheEntries } : {}) },
      );
      providers.push(p);
      return p;
    },
    async close() {
      for (const p of providers) await p.close();
      await real.close();
      await other.close();
    },
  };
}

function request(token: string | undefined): AuthRequest {
  return { token, path: "/v1/chat/completions", query: "", headers: {} };
}

/** Asserts what the caller would see: the status and the OpenAI error message. */
async function refused(promise: Promise<unknown>, status: number, message: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    const response = toErrorResponse(err);
    assert.equal(response.status, status);
    assert.equal(response.body.error.message, message);
    return true;
  });
}

/** A syntactically valid key that was never issued. */
function unknownKey(n: number): string {
  return `tg_${n.toString(36).padStart(43, "Z")}`;
}

test("a valid key authenticates as its principal, with its attributes", async () => {
  const f = await fixture();
  try {
    const { key } = await createApiKey(f.store, { principal: "alice", attributes: { roles: ["admin"], teams: ["ml"] } });
    const user = await f.provider().authenticate(request(key));
    assert.equal(user.principal, "alice");
    assert.deepEqual(user.attributes, { roles: ["admin"], teams: ["ml"] });
    assert.ok(Object.isFrozen(user.attributes.roles), "a caller cannot change the cached record through the user");
  } finally {
    await f.close();
  }
});

test("the provider takes a bearer credential and asks for a Tollgate API key when none is sent", async () => {
  const f = await fixture();
  try {
    const provider = f.provider();
    assert.equal(provider.type, "api_key");
    assert.equal(provider.credential, "bearer");
    assert.equal(
      provider.authRequiredMessage,
      "Authentication required. Please provide a valid Tollgate API key as a Bearer token in the Authorization header",
    );
    await refused(provider.authenticate(request(undefined)), 401, provider.authRequiredMessage);
  } finally {
    await f.close();
  }
});

test("an unknown key is refused with 401 Invalid API key and an invalid_token challenge", async () => {
  const f = await fixture();
  try {
    await assert.rejects(f.provider().authenticate(request(unknownKey(1))), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      const response = toErrorResponse(err);
      assert.equal(response.status, 401);
      assert.equal(response.body.error.message, "Invalid API key");
      assert.equal(response.body.error.code, "invalid_token");
      assert.match(response.headers["www-authenticate"]!, /error="invalid_token"/);
      return true;
    });
  } finally {
    await f.close();
  }
});

test("a token that is not shaped like a Tollgate key is refused without asking the store", async () => {
  const f = await fixture();
  try {
    const provider = f.provider();
    for (const token of ["sk-abc", "tg_short", `tg_${"a".repeat(44)}`, `tg_${"!".repeat(43)}`]) {
      await refused(provider.authenticate(request(token)), 401, "Invalid API key");
    }
    assert.equal(f.lookups(), 0);
  } finally {
    await f.close();
  }
});

test("a key revoked by another process is accepted until cache_ttl_ms passes, then refused", async () => {
  const f = await fixture();
  try {
    const { key, record } = await createApiKey(f.store, { principal: "alice" });
    const provider = f.provider(500);
    await provider.authenticate(request(key));
    await f.other.revokeApiKey(record.id, f.clock.now);
    f.clock.now += 499;
    assert.equal((await provider.authenticate(request(key))).principal, "alice", "still cached");
    f.clock.now += 1;
    await refused(provider.authenticate(request(key)), 401, "Invalid API key");
  } finally {
    await f.close();
  }
});

test("with cache_ttl_ms 0 every request asks the store, so revocation is immediate", async () => {
  const f = await fixture();
  try {
    const { key, record } = await createApiKey(f.store, { principal: "alice" });
    const provider = f.provider(0);
    await provider.authenticate(request(key));
    await provider.authenticate(request(key));
    assert.equal(f.lookups(), 2);
    await f.other.revokeApiKey(record.id, f.clock.now);
    await refused(provider.authenticate(request(key)), 401, "Invalid API key");
  } finally {
    await f.close();
  }
});

test("an expired key is refused with 401 API key has expired, even while its lookup is cached", async () => {
  const f = await fixture();
  try {
    const { key } = await createApiKey(f.store, { principal: "alice", now: f.clock.now, expiresAt: f.clock.now + 100 });
    const provider = f.provider(500);
    assert.equal((await provider.authenticate(request(key))).principal, "alice");
    f.clock.now += 100;
    await refused(provider.authenticate(request(key)), 401, "API key has expired");
    assert.equal(f.lookups(), 1, "expiry is checked against the clock, not only at lookup");
  } finally {
    await f.close();
  }
});

test("a revoked key that has also expired is refused as invalid, not as expired", async () => {
  const f = await fixture();
  try {
    const { key, record } = await createApiKey(f.store, { principal: "a", now: f.clock.now, expiresAt: f.clock.now + 1 });
    await f.store.revokeApiKey(record.id, f.clock.now);
    f.clock.now += 10;
    await refused(f.provider().authenticate(request(key)), 401, "Invalid API key");
  } finally {
    await f.close();
  }
});

test("unknown keys are cached too, and a key stored later is accepted once that entry expires", async () => {
  const f = await fixture();
  try {
    const token = unknownKey(7);
    const provider = f.provider(500);
    await refused(provider.authenticate(request(token)), 401, "Invalid API key");
    await refused(provider.authenticate(request(token)), 401, "Invalid API key");
    assert.equal(f.lookups(), 1);
    await f.other.insertApiKey({
      id: "key_00000000000000aa",
      hash: hashApiKey(token),
      prefix: token.slice(0, 10),
      principal: "late",
      attributes: {},
      createdAt: f.clock.now,
    });
    f.clock.now += 500;
    assert.equal((await provider.authenticate(request(token))).principal, "late");
  } finally {
    await f.close();
  }
});

test("concurrent requests with the same key share one store lookup", async () => {
  const f = await fixture();
  try {
    const { key } = await createApiKey(f.store, { principal: "alice" });
    const provider = f.provider(500);
    const users = await Promise.all(Array.from({ length: 20 }, () => provider.authenticate(request(key))));
    assert.ok(users.every((u) => u.principal === "alice"));
    assert.equal(f.lookups(), 1);
  } finally {
    await f.close();
  }
});

test("a closed store makes the provider refuse with 503 rather than let anyone in", async () => {
  const f = await fixture();
  const { key } = await createApiKey(f.store, { principal: "alice" });
  const provider = f.provider(500);
  await f.close();
  await assert.rejects(provider.authenticate(request(key)), IdentityUnavailableError);
  await refused(provider.authenticate(request(key)), 503, "API key store unavailable");
});

test("a failed lookup is not cached: the next request asks the store again", async () => {
  const f = await fixture();
  try {
    const { key } = await createApiKey(f.store, { principal: "alice" });
    let failNext = true;
    const flaky: RecordStore = {
      ...f.store,
      async findApiKeyByHash(hash) {
        if (failNext) {
          failNext = false;
          throw new Error("connection terminated unexpectedly");
        }
        return f.store.findApiKeyByHash(hash);
      },
    };
    const { log } = capturingLogger();
    const provider = createApiKeyProvider({ type: "api_key", cache_ttl_ms: 500 }, { store: flaky, log, now: () => f.clock.now });
    await refused(provider.authenticate(request(key)), 503, "API key store unavailable");
    assert.equal((await provider.authenticate(request(key))).principal, "alice");
    await provider.close();
  } finally {
    await f.close();
  }
});

test("a PostgreSQL store that goes away makes the provider refuse with 503", async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  // A schema of its own, so parallel runs never share the table.
  const schema = `tollgate_test_provider_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  await admin.query(`CREATE SCHEMA "${schema}"`);
  try {
    const scoped = new URL(url);
    scoped.searchParams.set("options", `-c search_path=${schema}`);
    const store = await openPostgresRecordStore(scoped.toString());
    const { key } = await createApiKey(store, { principal: "pg-user" });
    const { log } = capturingLogger();
    const provider = createApiKeyProvider({ type: "api_key", cache_ttl_ms: 0 }, { store, log });
    assert.equal((await provider.authenticate(request(key))).principal, "pg-user");
    await store.close();
    await refused(provider.authenticate(request(key)), 503, "API key store unavailable");
  } finally {
    await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    await admin.end();
  }
});

test("the cache holds at most maxCacheEntries lookups and evicts the oldest first", async () => {
  const f = await fixture();
  try {
    const provider = f.provider(500, 3);
    for (const n of [1, 2, 3, 4]) await refused(provider.authenticate(request(unknownKey(n))), 401, "Invalid API key");
    assert.equal(f.lookups(), 4);
    await refused(provider.authenticate(request(unknownKey(4))), 401, "Invalid API key");
    assert.equal(f.lookups(), 4, "the newest entry is still cached");
    await refused(provider.authenticate(request(unknownKey(1))), 401, "Invalid API key");
    assert.equal(f.lookups(), 5, "the oldest entry was evicted");
  } finally {
    await f.close();
  }
});

test("a flood of random tokens cannot grow the cache past 10,000 entries", async () => {
  const f = await fixture();
  try {
    assert.equal(API_KEY_CACHE_MAX_ENTRIES, 10_000);
    const provider = f.provider(1000);
    for (let n = 0; n <= API_KEY_CACHE_MAX_ENTRIES; n++) {
      await provider.authenticate(request(unknownKey(n))).catch(() => {});
    }
    const before = f.lookups();
    await provider.authenticate(request(unknownKey(API_KEY_CACHE_MAX_ENTRIES))).catch(() => {});
    assert.equal(f.lookups(), before, "the newest is cached");
    await provider.authenticate(request(unknownKey(0))).catch(() => {});
    assert.equal(f.lookups(), before + 1, "the first was evicted to stay within the bound");
  } finally {
    await f.close();
  }
});

test("no log line ever holds the key or its hash, whatever the outcome", async () => {
  const f = await fixture();
  try {
    const provider = f.provider(0);
    const good = await createApiKey(f.store, { principal: "alice" });
    const revoked = await createApiKey(f.store, { principal: "bob" });
    await f.store.revokeApiKey(revoked.record.id, f.clock.now);
    const expired = await createApiKey(f.store, { principal: "carol", now: f.clock.now - 10, expiresAt: f.clock.now - 5 });
    const secrets = [good.key, revoked.key, expired.key, unknownKey(9)];
    for (const key of secrets) await provider.authenticate(request(key)).catch(() => {});
    await f.close();
    for (const key of secrets) await provider.authenticate(request(key)).catch(() => {}); // store failures
    assert.ok(f.lines.length > 0, "the provider does log its refusals");
    const all = f.lines.join("");
    for (const key of secrets) {
      assert.ok(!all.includes(key), "a key reached the log");
      assert.ok(!all.includes(key.slice(3)), "the secret part of a key reached the log");
      assert.ok(!all.includes(hashApiKey(key)), "a key's hash reached the log");
    }
  } catch (err) {
    await f.close();
    throw err;
  }
});
