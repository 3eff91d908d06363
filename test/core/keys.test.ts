import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  API_KEY_PATTERN,
  apiKeyStatus,
  ApiKeyInputError,
  createApiKey,
  decodeAttributes,
  decodeLimits,
  hashApiKey,
  parseAttributes,
  parseDuration,
} from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { RecordStore } from "../../src/core/stores/types.js";

const tempRoot = mkdtempSync(join(tmpdir(), "tollgate-keys-"));
after(() => rmSync(tempRoot, { recursive: true, force: true }));
let counter = 0;

async function withStore(work: (store: RecordStore) => Promise<void>): Promise<void> {
  const store = await openRecordStore({ type: "sqlite", db_path: join(tempRoot, `keys-${++counter}.db`) });
  try {
    await work(store);
  } finally {
    await store.close();
  }
}

describe("createApiKey", () => {
  test("a new key is tg_ plus 43 base64url characters, and only its hash is stored", async () => {
    await withStore(async (store) => {
      const { key, record } = await createApiKey(store, { principal: "alice", attributes: { roles: ["admin"] } });
      assert.match(key, /^tg_[A-Za-z0-9_-]{43}$/);
      assert.match(key, API_KEY_PATTERN);
      assert.equal(record.hash, createHash("sha256").update(key).digest("hex"));
      const [stored] = await store.listApiKeys();
      assert.deepEqual(stored, record);
      assert.ok(!JSON.stringify(stored).includes(key.slice(10)), "the secret part of the key is not stored");
    });
  });

  test("the record has a key_ id of 16 hex characters, the key's first 10 characters, principal and attributes", async () => {
    await withStore(async (store) => {
      const { key, record } = await createApiKey(store, {
        principal: "svc-batch",
        attributes: { roles: ["user"], teams: ["ml", "infra"] },
        now: 1_700_000_000_000,
        expiresAt: 1_700_000_060_000,
      });
      assert.match(record.id, /^key_[0-9a-f]{16}$/);
      assert.equal(record.prefix, key.slice(0, 10));
      assert.equal(record.principal, "svc-batch");
      assert.deepEqual(record.attributes, { roles: ["user"], teams: ["ml", "infra"] });
      assert.equal(record.createdAt, 1_700_000_000_000);
      assert.equal(record.expiresAt, 1_700_000_060_000);
      assert.equal(record.revokedAt, undefined);
    });
  });

  test("two keys are never the same", async () => {
    await withStore(async (store) => {
      const keys = new Set<string>();
      const ids = new Set<string>();
      for (let i = 0; i < 50; i++) {
        const { key, record } = await createApiKey(store, { principal: "p" });
        keys.add(key);
        ids.add(record.id);
      }
      assert.equal(keys.size, 50);
      assert.equal(ids.size, 50);
    });
  });

  test("an empty principal is refused before anything is stored", async () => {
    await withStore(async (store) => {
      await assert.rejects(createApiKey(store, { principal: "  " }), /principal must be a non-empty string/);
      assert.deepEqual(await store.listApiKeys(), []);
    });
  });

  test("an expiry that is not in the future is refused", async () => {
    await withStore(async (store) => {
      await assert.rejects(createApiKey(store, { principal: "a", now: 1000, expiresAt: 1000 }), /expiry must be a time in the future/);
      await assert.rejects(createApiKey(store, { principal: "a", now: 1000, expiresAt: 1000.5 }), /expiry/);
    });
  });

  test("attributes that are not lists of strings are refused", async () => {
    await withStore(async (store) => {
      const attributes = { roles: "admin" } as unknown as Record<string, string[]>;
      await assert.rejects(createApiKey(store, { principal: "a", attributes }), /attribute "roles"/);
    });
  });

  test("a name and per-key limits are stored with the key", async () => {
    await withStore(async (store) => {
      const limits = [{ requests: 5, period: "second" }, { spend: 12.5, period: "month" }];
      const { record } = await createApiKey(store, { principal: "a", name: "ci bot", limits });
      assert.deepEqual(await store.getApiKey(record.id), { ...record, name: "ci bot", limits });
    });
  });

  test("a bad field is refused naming it, and nothing is stored", async () => {
    await withStore(async (store) => {
      const refusal = (param: string) => (err: unknown) => err instanceof ApiKeyInputError && err.param === param;
      await assert.rejects(createApiKey(store, { principal: "" }), refusal("principal"));
      await assert.rejects(createApiKey(store, { principal: "a", name: "x".repeat(201) }), refusal("name"));
      await assert.rejects(createApiKey(store, { principal: "a", now: 5, expiresAt: 1 }), refusal("expires_at"));
      await assert.rejects(createApiKey(store, { principal: "a", attributes: { roles: [1] } as never }), refusal("attributes.roles"));
      await assert.rejects(createApiKey(store, { principal: "a", limits: [{ requests: 1, period: "day" }, { spend: 1, period: "year" }] }), refusal("limits[1].period"));
      await assert.rejects(createApiKey(store, { principal: "a", limits: [{ spend: -1, period: "day" }] }), refusal("limits[0].spend"));
      await assert.rejects(createApiKey(store, { principal: "a", limits: [{ requests: 1, tokens: 2, period: "day" }] }), /limits\[0\]/);
      assert.deepEqual(await store.listApiKeys(), []);
    });
  });

  test("stored limits that do not parse refuse every request of the key rather than none", () => {
    assert.deepEqual(decodeLimits("not json"), [{ requests: 0, period: "second" }]);
    assert.deepEqual(decodeLimits('[{"spend": "lots", "period": "day"}]'), [{ requests: 0, period: "second" }]);
    assert.deepEqual(decodeLimits('[{"tokens": 7, "period": "hour"}]'), [{ tokens: 7, period: "hour" }]);
  });
});

describe("hashApiKey", () => {
  test("is the hex SHA-256 of the key", () => {
    assert.equal(hashApiKey("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });
});

describe("parseDuration", () => {
  const valid: [string, number][] = [
    ["45s", 45_000],
    ["15m", 900_000],
    ["12h", 43_200_000],
    ["30d", 2_592_000_000],
    ["2w", 1_209_600_000],
    [" 1d ", 86_400_000],
  ];
  for (const [text, ms] of valid) {
    test(`${JSON.stringify(text)} is ${ms} ms`, () => assert.equal(parseDuration(text), ms));
  }

  const invalid: [string, RegExp][] = [
    ["0d", /must be more than zero/],
    ["-1d", /expected a whole number and a unit/],
    ["30", /expected a whole number and a unit/],
    ["1.5h", /expected a whole number and a unit/],
    ["1d12h", /expected a whole number and a unit/],
    ["30 days", /expected a whole number and a unit/],
    ["1y", /expected a whole number and a unit/],
    ["", /expected a whole number and a unit/],
    ["5300w", /at most 100 years/],
    ["99999999999999999999999d", /at most 100 years/],
  ];
  for (const [text, reason] of invalid) {
    test(`${JSON.stringify(text)} is refused with a clear reason`, () => {
      assert.throws(() => parseDuration(text), (err: Error) => {
        assert.match(err.message, reason);
        assert.ok(err.message.includes(JSON.stringify(text)), "the message quotes the input");
        return true;
      });
    });
  }
});

describe("parseAttributes", () => {
  test("repeated names accumulate their values in order", () => {
    assert.deepEqual(parseAttributes(["roles=admin", "teams=ml", "roles=user"]), { roles: ["admin", "user"], teams: ["ml"] });
  });

  test("a comma separates several values, the same as repeating the name", () => {
    assert.deepEqual(parseAttributes(["roles=admin,user"]), parseAttributes(["roles=admin", "roles=user"]));
  });

  test("a value repeated is kept once", () => {
    assert.deepEqual(parseAttributes(["roles=a,a", "roles=a"]), { roles: ["a"] });
  });

  test("only the first = splits, so values may contain =", () => {
    assert.deepEqual(parseAttributes(["filter=a=b"]), { filter: ["a=b"] });
  });

  test("no pairs means no attributes", () => {
    assert.deepEqual(parseAttributes([]), {});
  });

  test("__proto__ is an ordinary attribute name, not the object's prototype", () => {
    const attributes = parseAttributes(["__proto__=x"]);
    assert.deepEqual(Object.keys(attributes), ["__proto__"]);
    assert.equal(Object.getPrototypeOf(attributes), Object.prototype);
    assert.deepEqual(JSON.parse(JSON.stringify(attributes)), JSON.parse('{"__proto__":["x"]}'));
  });

  const invalid: [string, RegExp][] = [
    ["roles", /expected name=value/],
    ["=admin", /the name is empty/],
    ["roles=", /empty value/],
    ["roles=a,,b", /empty value/],
    ["roles=a,", /empty value/],
  ];
  for (const [pair, reason] of invalid) {
    test(`${JSON.stringify(pair)} is refused with a clear reason`, () => {
      assert.throws(() => parseAttributes([pair]), reason);
    });
  }
});

describe("apiKeyStatus", () => {
  const base = { id: "key_1", hash: "h", prefix: "tg_1", principal: "p", attributes: {}, createdAt: 0 };
  test("a key is active until the millisecond it expires, then expired", () => {
    assert.equal(apiKeyStatus({ ...base, expiresAt: 100 }, 99), "active");
    assert.equal(apiKeyStatus({ ...base, expiresAt: 100 }, 100), "expired");
    assert.equal(apiKeyStatus(base, Number.MAX_SAFE_INTEGER), "active");
  });
  test("a revoked key is revoked even when it has also expired", () => {
    assert.equal(apiKeyStatus({ ...base, expiresAt: 1, revokedAt: 2 }, 50), "revoked");
  });
});

describe("decodeAttributes", () => {
  test("keeps string lists and drops everything else rather than trusting it", () => {
    assert.deepEqual(decodeAttributes('{"roles":["a"],"n":[1],"s":"x","o":{}}'), { roles: ["a"] });
    assert.deepEqual(decodeAttributes("[1,2]"), {});
    assert.deepEqual(decodeAttributes("not json"), {});
    assert.deepEqual(decodeAttributes("null"), {});
  });
});
