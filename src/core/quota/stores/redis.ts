import { Redis, type RedisOptions } from "ioredis";
import type { CounterCheck, HitResult, QuotaStore } from "../store.js";

/**
 * The shared quota store for several gateway replicas: Redis, with every
 * check one server-side Lua script (atomic: Redis runs one script at a time),
 * and every counter expiring with its window (`PEXPIREAT`), so nothing needs
 * sweeping.
 *
 * Keys are `<namespace>{<client>}:<limit>:<window start>`; the braces are a
 * Redis Cluster hash tag, so one client's counters live in one slot and the
 * multi-key script stays valid on a cluster.
 *
 * A Redis that is down or slow must never hang a request: commands are not
 * queued while disconnected (they fail at once), each has a timeout, and the
 * client reconnects in the background with a capped backoff.
 */

/**
 * Reads every counter; when all are below their limits, increments the
 * consuming ones. ARGV per key: limit, consume (1/0), expires-at (ms).
 * Returns {admitted (1/0), count1, count2, ...}.
 */
const HIT_SCRIPT = `
local counts = {}
local admitted = 1
for i = 1, #KEYS do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  counts[i] = c
  if c >= tonumber(ARGV[3 * i - 2]) then admitted = 0 end
end
if admitted == 1 then
  for i = 1, #KEYS do
    if ARGV[3 * i - 1] == '1' then
      counts[i] = redis.call('INCR', KEYS[i])
      redis.call('PEXPIREAT', KEYS[i], ARGV[3 * i])
    end
  end
end
table.insert(counts, 1, admitted)
return counts
`;

/** INCRBY, then make sure the counter expires with its window. */
const ADD_SCRIPT = `
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`;

/** Where Redis is: a URL (`redis://`, `rediss://` for TLS, password in it) or Llama Stack's host/port form. */
export type RedisLocation =
  | { readonly url: string; readonly password?: string | undefined }
  | { readonly host: string; readonly port: number; readonly password?: string | undefined };

export interface RedisQuotaStoreOptions {
  readonly location: RedisLocation;
  /** Key prefix (Llama Stack's `namespace`); default `tollgate:quota:`. */
  readonly namespace?: string | undefined;
  /** Per-command timeout; default 1000 ms. */
  readonly commandTimeoutMs?: number | undefined;
  /** Called with connection errors (rate-limit your logging there); never with a secret. */
  readonly onError?: ((err: Error) => void) | undefined;
}

interface QuotaRedis extends Redis {
  tollgateHit(numKeys: number, ...args: (string | number)[]): Promise<number[]>;
  tollgateAdd(key: string, amount: number, expiresAt: number): Promise<number>;
}

/**
 * Connects to Redis (lazily: the first check connects) and returns the store.
 *
 * @example
 * const store = createRedisQuotaStore({ location: { url: "rediss://:secret@redis.internal:6380/0" } });
 */
export function createRedisQuotaStore(options: RedisQuotaStoreOptions): QuotaStore {
  const { location, namespace = "tollgate:quota:", commandTimeoutMs = 1000 } = options;
  const common: RedisOptions = {
    lazyConnect: false,
    // Fail fast while disconnected: a request must not wait for a Redis that is down.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: Math.max(commandTimeoutMs, 2000),
    // Keep trying to come back, at most every second.
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 5), 1000),
    ...(location.password !== undefined ? { password: location.password } : {}),
  };
  const redis = (
    "url" in location ? new Redis(location.url, common) : new Redis({ ...common, host: location.host, port: location.port })
  ) as QuotaRedis;
  // ioredis emits 'error' on every failed reconnect; unhandled, an EventEmitter 'error' would end the process.
  redis.on("error", (err: Error) => options.onError?.(err));
  redis.defineCommand("tollgateHit", { lua: HIT_SCRIPT });
  redis.defineCommand("tollgateAdd", { numberOfKeys: 1, lua: ADD_SCRIPT });

  let closed = false;

  let connecting: Promise<void> | undefined;
  /**
   * Connected: go. Connecting (first start, or the socket is being set up):
   * wait for it, up to the command timeout. Reconnecting after a failure:
   * fail at once, so that every request does not wait out a Redis that is down.
   */
  function ready(): Promise<void> | undefined {
    if (redis.status === "ready") return undefined;
    if (closed) return Promise.reject(new Error("quota store is closed"));
    if (redis.status !== "wait" && redis.status !== "connecting" && redis.status !== "connect") {
      return Promise.reject(new Error(`Redis is not connected (${redis.status})`));
    }
    // One wait shared by every check that arrives while connecting.
    connecting ??= new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        redis.off("ready", onReady);
        redis.off("close", onClose);
        connecting = undefined;
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const onClose = () => done(new Error("Redis connection closed"));
      const timer = setTimeout(() => done(new Error("Redis did not connect in time")), commandTimeoutMs);
      redis.once("ready", onReady);
      redis.once("close", onClose);
    });
    return connecting;
  }

  return {
    async hit(counters: readonly CounterCheck[]): Promise<HitResult> {
      await ready();
      const keys = counters.map((c) => namespace + braced(c.key));
      const args: (string | number)[] = [];
      for (const c of counters) args.push(c.limit, c.consume ? "1" : "0", c.expiresAt);
      const [admitted, ...counts] = await redis.tollgateHit(keys.length, ...keys, ...args);
      return { admitted: admitted === 1, counts: counts.map(Number) };
    },
    async ping() {
      await ready();
      // A write that expires by itself, not PING: a read-only replica, a
      // server over maxmemory (noeviction) or one refusing writes after a
      // failed save still answers PING, and /ready must say what writes meet.
      await redis.set(`${namespace}{probe}:ready`, "1", "PX", 60_000);
    },
    async add(key, amount, expiresAt) {
      await ready();
      if (amount > 0) await redis.tollgateAdd(namespace + braced(key), Math.trunc(amount), expiresAt);
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        await redis.quit();
      } catch {
        redis.disconnect();
      }
    },
  };
}

/** `u_abc:requests-day:123` → `{u_abc}:requests-day:123` (the client part is the hash tag). */
function braced(key: string): string {
  const colon = key.indexOf(":");
  return colon === -1 ? `{${key}}` : `{${key.slice(0, colon)}}${key.slice(colon)}`;
}
