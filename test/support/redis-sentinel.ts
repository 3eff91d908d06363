import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { redisCli, until } from "./redis-cluster.js";
import { closedPort } from "./refusal.js";
import { redisProcess, type ThrowawayRedis } from "./redis-server.js";

/**
 * A throwaway Sentinel group of a test's own: a master, its replica and one
 * sentinel (`redis-server sentinel.conf --sentinel`) watching them as
 * `mymaster`, on free ports, nothing persisted; `stop()` ends them all and
 * removes their folder. Never the machine's shared Redis.
 */
export interface ThrowawaySentinel {
  readonly name: "mymaster";
  /** The sentinel's URL, for `kvstore.sentinel.nodes`. */
  readonly sentinelUrl: string;
  readonly sentinel: ThrowawayRedis;
  /** The first master and its replica; a failover swaps their roles. */
  readonly servers: readonly ThrowawayRedis[];
  /** The port of the master the sentinel names now. */
  masterPort(): Promise<number>;
  /** `SENTINEL FAILOVER mymaster`; resolves with the new master's port once the sentinel names it and it takes writes. */
  failover(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * `password`: the master's and replica's (`requirepass`, `masterauth`, the
 * sentinel's `auth-pass`); `sentinelPassword`: the sentinel's own (`requirepass`).
 */
export async function throwawaySentinel({ password, sentinelPassword }: { password?: string; sentinelPassword?: string } = {}): Promise<ThrowawaySentinel> {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-redis-sentinel-"));
  const [masterPort, sentinelPort] = [await closedPort(), await closedPort()];
  const replicaPorts = [await closedPort()];
  const auth = (secret: string | undefined) => (secret === undefined ? [] : ["-a", secret, "--no-auth-warning"]);
  /** redis-cli against a server (its password) or the sentinel (its own). */
  const cli = (port: number, ...args: string[]) => redisCli(port, ...auth(port === sentinelPort ? sentinelPassword : password), ...args);
  const server = (port: number, ...args: string[]) =>
    redisProcess(port, [
      "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
      // The replica's first sync starts at once (Redis 7 waits 5 s by default for more replicas to share a diskless transfer).
      "--repl-diskless-sync-delay", "0",
      ...(password === undefined ? [] : ["--requirepass", password, "--masterauth", password]),
      ...args,
    ]);
  const servers = [server(masterPort), ...replicaPorts.map((port) => server(port, "--replicaof", "127.0.0.1", String(masterPort)))];
  const conf = join(dir, "sentinel.conf");
  // The sentinel rewrites its file (what it learns of replicas, the new master after a failover).
  writeFileSync(
    conf,
    [
      `port ${sentinelPort}`,
      "bind 127.0.0.1",
      `dir ${dir}`,
      `sentinel monitor mymaster 127.0.0.1 ${masterPort} 1`,
      "sentinel down-after-milliseconds mymaster 1000",
      "sentinel failover-timeout mymaster 10000",
      ...(password === undefined ? [] : [`sentinel auth-pass mymaster ${password}`]),
      ...(sentinelPassword === undefined ? [] : [`requirepass ${sentinelPassword}`]),
      "",
    ].join("\n"),
  );
  const sentinel = redisProcess(sentinelPort, [conf, "--sentinel"]);
  const group: ThrowawaySentinel = {
    name: "mymaster",
    sentinelUrl: sentinel.url,
    sentinel,
    servers,
    async masterPort() {
      const [, port] = (await cli(sentinelPort, "sentinel", "get-master-addr-by-name", "mymaster")).trim().split("\n");
      return Number(port);
    },
    async failover() {
      const before = await group.masterPort();
      // NOGOODSLAVE while the sentinel's news of the replica is stale: asked again.
      await until("the sentinel to start a failover", async () => (await cli(sentinelPort, "sentinel", "failover", "mymaster")).trim() === "OK");
      await until("the sentinel to name a new master", async () => (await group.masterPort()) !== before);
      const after = await group.masterPort();
      await until("the new master to take writes", async () => (await cli(after, "role")).startsWith("master"));
      return after;
    },
    async stop() {
      await sentinel.stop();
      for (const s of servers) await s.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    for (const s of servers) await s.start();
    for (const port of replicaPorts) {
      // Allowed longer than the other waits: a first sync on a loaded CI machine has taken over 20 s.
      await until("a replica to sync", async () => (await cli(port, "info", "replication")).includes("master_link_status:up"), 60_000);
    }
    await sentinel.start();
    // SENTINEL FAILOVER needs a replica the sentinel knows of (learnt from the master's INFO).
    await until("the sentinel to find the replicas", async () => {
      const replicas = await cli(sentinelPort, "sentinel", "replicas", "mymaster");
      return replicaPorts.every((port) => replicas.includes(String(port)));
    });
    return group;
  } catch (err) {
    await group.stop();
    throw err;
  }
}
