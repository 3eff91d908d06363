import assert from "node:assert/strict";
import { test } from "node:test";
import { parseConfig } from "../../../src/core/config/load.js";
import { ConfigError } from "../../../src/core/errors.js";

// server.quota.kvstore for Redis: one server (url, or Llama Stack's
// host/port), a Redis Cluster or a Sentinel group; each error names its path.

function kvstoreOf(kvstore: string, env: Record<string, string> = {}) {
  return parseConfig(`server: {quota: {kvstore: ${kvstore}}}`, "tollgate.yaml", env).server.quota?.kvstore;
}

/** The issues `kvstore` is refused with, without their "(line 1)". */
function issuesOf(kvstore: string): readonly string[] {
  try {
    kvstoreOf(kvstore);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues.map((issue) => issue.replace(/ \(line \d+\)$/, ""));
  }
  assert.fail("expected the config to be refused");
}

test("the single-server forms load as before", () => {
  assert.deepEqual(kvstoreOf("{type: redis, url: 'redis://127.0.0.1:6379/0'}"), { type: "redis", url: "redis://127.0.0.1:6379/0", command_timeout_ms: 1000 });
  assert.deepEqual(kvstoreOf("{type: redis, host: redis, port: 6380, namespace: x}"), { type: "redis", host: "redis", port: 6380, namespace: "x", command_timeout_ms: 1000 });
});

test("a cluster's nodes and a sentinel group load, passwords from the environment kept as text", () => {
  assert.deepEqual(
    kvstoreOf("{type: redis, cluster: {nodes: ['redis://10.0.0.1:6379', 'redis://10.0.0.2:6379']}, password: '${env.REDIS_PASSWORD}'}", { REDIS_PASSWORD: "0123" }),
    { type: "redis", cluster: { nodes: ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"] }, password: "0123", command_timeout_ms: 1000 },
  );
  assert.deepEqual(
    kvstoreOf("{type: redis, sentinel: {name: mymaster, nodes: ['rediss://s1:26379'], password: '${env.SENTINEL_PASSWORD}'}}", { SENTINEL_PASSWORD: "s3" }),
    { type: "redis", sentinel: { name: "mymaster", nodes: ["rediss://s1:26379"], password: "s3", wait_for_replicas: 1 }, command_timeout_ms: 1000 },
  );
});

test("two ways to reach Redis at once are refused, naming the second", () => {
  assert.deepEqual(issuesOf("{type: redis, url: 'redis://a:6379', cluster: {nodes: ['redis://b:6379']}}"), [
    "server.quota.kvstore.cluster: use one of url, host/port, cluster or sentinel, not url and cluster",
  ]);
  assert.deepEqual(issuesOf("{type: redis, host: a, port: 6379, sentinel: {name: m, nodes: ['redis://b:26379']}}"), [
    "server.quota.kvstore.sentinel: use one of url, host/port, cluster or sentinel, not host and sentinel",
  ]);
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://b:6379']}, sentinel: {name: m, nodes: ['redis://b:26379']}}"), [
    "server.quota.kvstore.sentinel: use one of url, host/port, cluster or sentinel, not cluster and sentinel",
  ]);
});

test("a node with a password, a database or another scheme, mixed schemes, no nodes, an unknown key: refused with their path", () => {
  const node = "expected redis://host:port or rediss://host:port (no password or database in it: the password goes in password)";
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://a:1', 'redis://:pw@b:2']}}"), [`server.quota.kvstore.cluster.nodes[1]: ${node}`]);
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://a:1/2']}}"), [`server.quota.kvstore.cluster.nodes[0]: ${node}`]);
  assert.deepEqual(issuesOf("{type: redis, sentinel: {name: m, nodes: ['http://a:1']}}"), [`server.quota.kvstore.sentinel.nodes[0]: ${node}`]);
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://a:1', 'rediss://b:2']}}"), ["server.quota.kvstore.cluster.nodes: all nodes redis:// or all rediss://"]);
  assert.match(issuesOf("{type: redis, cluster: {nodes: []}}").join("\n"), /^server\.quota\.kvstore\.cluster\.nodes: /);
  assert.match(issuesOf("{type: redis, sentinel: {nodes: ['redis://a:1']}}").join("\n"), /^server\.quota\.kvstore\.sentinel\.name: /);
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://a:1'], replicas: 1}}"), ["server.quota.kvstore.cluster.replicas: unknown key"]);
  assert.match(issuesOf("{type: redis, sentinel: {name: m, nodes: ['redis://a:1'], wait_for_replicas: -1}}").join("\n"), /^server\.quota\.kvstore\.sentinel\.wait_for_replicas: /);
});

test("a brace in a cluster's namespace is refused: it would split one check's keys over several slots", () => {
  assert.deepEqual(issuesOf("{type: redis, cluster: {nodes: ['redis://a:1']}, namespace: 'q{x}:'}"), [
    "server.quota.kvstore.namespace: no { or } in a cluster's namespace (the client's hash tag follows it)",
  ]);
});
