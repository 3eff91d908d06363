import { Cluster, Redis, type RedisOptions } from "ioredis";
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
 * A counter outlives its window by {@link EXPIRY_GRACE_MS}: a check computed
 * just before the window ends may reach Redis just after, and it must find
 * the window's count, not a key that `PEXPIREAT` in the past has deleted
 * (which would admit every late check of a full window).
 *
 * The same on a Redis Cluster (every check's keys share the client's slot,
 * so the script stays one atomic step on one master) and behind Sentinel
 * (the master is asked of the sentinels, and again after a failover).
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

/** How long a counter is kept after its window ends, for the checks of that window still on their way. */
export const EXPIRY_GRACE_MS = 60_000;

/** INCRBY, then make sure the counter expires with its window. */
const ADD_SCRIPT = `
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`;

/** Where Redis is: a URL (`redis://`, `rediss://` for TLS, password in it), Llama Stack's host/port form, a Cluster or a Sentinel group. */
export type RedisLocation =
  | { readonly url: string; readonly password?: string | undefined }
  | { readonly host: string; readonly port: number; readonly password?: string | undefined }
  | {
      /** Some of the cluster's nodes, `redis://host:port` (`rediss://` for TLS); the rest are discovered. */
      readonly cluster: { readonly nodes: readonly string[] };
      /** Every node's password. */
      readonly password?: string | undefined;
    }
  | {
      /** The master group `name` and its sentinels, `redis://host:port` (`rediss://`: TLS to the sentinels and the master). */
      readonly sentinel: {
        readonly name: string;
        readonly nodes: readonly string[];
        readonly password?: string | undefined;
        /**
         * Replicas that must hold an admitted request's count before it is let
         * through (WAIT); default 1. Replication is asynchronous: without it, a
         * failover loses the counts the old master had not sent on.
         */
        readonly waitForReplicas?: number | undefined;
      };
      /** The master's password. */
      readonly password?: string | undefined;
    };

export interface RedisQuotaStoreOptions {
  readonly location: RedisLocation;
  /** Key prefix (Llama Stack's `namespace`); default `tollgate:quota:`. */
  readonly namespace?: string | undefined;
  /** Per-command timeout; default 1000 ms. */
  readonly commandTimeoutMs?: number | undefined;
  /** Called with connection errors (rate-limit your logging there); never with a secret. */
  readonly onError?: ((err: Error) => void) | undefined;
}

interface QuotaCommands {
  tollgateHit(numKeys: number, ...args: (string | number)[]): Promise<number[]>;
  tollgateAdd(key: string, amount: number, expiresAt: number): Promise<number>;
}
type QuotaRedis = (Redis | Cluster) & QuotaCommands;

/**
 * Connects to Redis (lazily: the first check connects) and returns the store.
 *
 * @example
 * const store = createRedisQuotaStore({ location: { url: "rediss://:secret@redis.internal:6380/0" } });
 * const clustered = createRedisQuotaStore({ location: { cluster: { nodes: ["redis://10.0.0.1:6379"] }, password: "secret" } });
 */
export function createRedisQuotaStore(options: RedisQuotaStoreOptions): QuotaStore {
  const { location, namespace = "tollgate:quota:", commandTimeoutMs = 1000 } = options;
  const redis = connect(location, commandTimeoutMs);
  // ioredis emits 'error' on every failed reconnect; unhandled, an EventEmitter 'error' would end the process.
  redis.on("error", (err: Error) => options.onError?.(err));
  redis.defineCommand("tollgateHit", { lua: HIT_SCRIPT });
  redis.defineCommand("tollgateAdd", { numberOfKeys: 1, lua: ADD_SCRIPT });
  /**
   * A cluster retries a command through redirections and slot refreshes
   * (a node down, a failover); however it goes, a check gives up after the
   * command timeout, as on a single server.
   */
  const bounded = <T>(command: () => Promise<T>): Promise<T> =>
    redis instanceof Cluster ? withDeadline(command(), commandTimeoutMs) : command();
  const replicas = "sentinel" in location ? (location.sentinel.waitForReplicas ?? 1) : 0;
  /**
   * Behind Sentinel, a count is kept only once a replica has it: the old
   * master goes on taking writes between a replica's promotion and its own
   * demotion, and those are dropped when it becomes a replica. A write that
   * no replica acknowledged in time is a store failure (closed: refused).
   */
  let waiting: Promise<void> | undefined;
  function replicated(): Promise<void> {
    if (replicas === 0) return Promise.resolve();
    // WAIT covers every write this connection sent before it, and blocks the connection while it
    // waits: the checks answered in the same tick share one.
    waiting ??= Promise.resolve().then(async () => {
      waiting = undefined;
      const acknowledged = await redis.wait(replicas, Math.max(1, Math.floor(commandTimeoutMs / 2)));
      if (acknowledged < replicas) throw new Error(`Redis: ${acknowledged} of ${replicas} replicas acknowledged the count in time`);
    });
    return waiting;
  }

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
      for (const c of counters) args.push(c.limit, c.consume ? "1" : "0", c.expiresAt + EXPIRY_GRACE_MS);
      const [admitted, ...counts] = await bounded(() => redis.tollgateHit(keys.length, ...keys, ...args));
      if (admitted === 1 && counters.some((c) => c.consume)) await replicated();
      return { admitted: admitted === 1, counts: counts.map(Number) };
    },
    async ping() {
      await ready();
      // A write that expires by itself, not PING: a read-only replica, a
      // server over maxmemory (noeviction) or one refusing writes after a
      // failed save still answers PING, and /ready must say what writes meet.
      // On a cluster, one probe per master: a master down leaves a share of the clients without counters.
      const tags = redis instanceof Cluster ? probeTags(redis) : ["probe"];
      await bounded(() => Promise.all(tags.map((tag) => redis.set(`${namespace}{${tag}}:ready`, "1", "PX", 60_000))));
    },
    async add(key, amount, expiresAt) {
      await ready();
      if (amount > 0) {
        await bounded(() => redis.tollgateAdd(namespace + braced(key), Math.trunc(amount), expiresAt + EXPIRY_GRACE_MS));
        await replicated();
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        await redis.quit();
      } catch {
        // Not connected: nothing to say goodbye to.
      }
      // Also after QUIT: it leaves the sentinel subscriptions of the failover detector open, reconnecting.
      redis.disconnect();
    },
  };
}

/** `u_abc:requests-day:123` → `{u_abc}:requests-day:123` (the client part is the hash tag). */
function braced(key: string): string {
  const colon = key.indexOf(":");
  return colon === -1 ? `{${key}}` : `{${key.slice(0, colon)}}${key.slice(colon)}`;
}

/** The client for `location`: one server, a cluster, or the master a sentinel group names. */
function connect(location: RedisLocation, commandTimeoutMs: number): QuotaRedis {
  const common: RedisOptions = {
    lazyConnect: false,
    // Fail fast while disconnected: a request must not wait for a Redis that is down.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: Math.max(commandTimeoutMs, 2000),
    // Keep trying to come back, at most every second.
    retryStrategy: backoff,
    ...(location.password !== undefined ? { password: location.password } : {}),
  };
  if ("url" in location) return new Redis(location.url, common) as QuotaRedis;
  if ("host" in location) return new Redis({ ...common, host: location.host, port: location.port }) as QuotaRedis;
  if ("cluster" in location) {
    const nodes = location.cluster.nodes.map(nodeAddress);
    const { retryStrategy: _perNode, enableOfflineQueue: _queue, ...redisOptions } = common;
    return new Cluster(
      nodes.map(({ host, port }) => ({ host, port })),
      {
        // Unlike one server's, the cluster's queue must stay on: its own ready check is sent while the
        // discovered nodes are still connecting. Checks wait for "ready" in ready() and are bounded by a deadline.
        enableOfflineQueue: true,
        clusterRetryStrategy: backoff,
        slotsRefreshTimeout: Math.max(commandTimeoutMs, 1000),
        // Counters are read and written by one script, which runs on the slot's master.
        scaleReads: "master",
        redisOptions: { ...redisOptions, ...(nodes[0]?.tls ? { tls: {} } : {}) },
      },
    ) as QuotaRedis;
  }
  const { name, nodes, password } = location.sentinel;
  const sentinels = nodes.map(nodeAddress);
  const tls = sentinels[0]?.tls === true;
  return new Redis({
    ...common,
    name,
    sentinels: sentinels.map(({ host, port }) => ({ host, port })),
    role: "master",
    ...(password !== undefined ? { sentinelPassword: password } : {}),
    sentinelCommandTimeout: commandTimeoutMs,
    // Told of a failover by the sentinels (+switch-master), not only when the old master's connection drops.
    failoverDetector: true,
    ...(tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
  }) as QuotaRedis;
}

/** Reconnect delays: 100 ms, 200 ms, ... at most a second. */
function backoff(times: number): number {
  return Math.min(50 * 2 ** Math.min(times, 5), 1000);
}

/** `redis://10.0.0.1:6379` → host, port and whether TLS is on (`rediss://`). */
function nodeAddress(url: string): { host: string; port: number; tls: boolean } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(u.port || 6379), tls: u.protocol === "rediss:" };
}

function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * A hash tag for each master the client knows of (`probe-17` lands in a slot
 * of the first master, ...), so that /ready writes to every one of them.
 */
function probeTags(cluster: Cluster): string[] {
  const masters = new Set(cluster.slots.map((owners) => owners[0]).filter((node) => node !== undefined));
  const tags = new Map<string, string>();
  for (let i = 0; tags.size < masters.size && i < 100_000; i++) {
    const master = cluster.slots[keySlot(`probe-${i}`)]?.[0];
    if (master !== undefined && !tags.has(master)) tags.set(master, `probe-${i}`);
  }
  return tags.size > 0 ? [...tags.values()] : ["probe"];
}

/** Redis Cluster's slot of a key without braces: CRC16 (XMODEM) mod 16384. */
export function keySlot(key: string): number {
  let crc = 0;
  for (const byte of Buffer.from(key)) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}
