import assert from "node:assert/strict";
import { homedir } from "node:os";
import { describe, test } from "node:test";
import { parseConfig } from "../../../src/core/config/load.js";
import { ConfigError } from "../../../src/core/errors.js";

// Llama Stack 0.7's `server` and `storage` sections, copied from a run.yaml
// unchanged, load; each error still names its path in the file.

/** The issues a config text is refused with. */
function issuesOf(text: string, env: Record<string, string> = {}): readonly string[] {
  try {
    parseConfig(text, "run.yaml", env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  }
  assert.fail("expected the config to be refused");
}

// The storage section of Llama Stack 0.7's starter distribution, as shipped.
const STARTER_STORAGE = `
storage:
  backends:
    kv_default:
      type: kv_sqlite
      db_path: \${env.SQLITE_STORE_DIR:=~/.llama/distributions/starter}/kvstore.db
    sql_default:
      type: sql_sqlite
      db_path: \${env.SQLITE_STORE_DIR:=~/.llama/distributions/starter}/sql_store.db
  stores:
    metadata:
      namespace: registry
      backend: kv_default
    inference:
      table_name: inference_store
      backend: sql_default
      max_write_queue_size: 10000
      num_writers: 4
    conversations:
      table_name: openai_conversations
      backend: sql_default
    prompts:
      namespace: prompts
      backend: kv_default
`;

describe("Llama Stack 0.7 run.yaml sections", () => {
  test("the starter's storage and a quota kvstore reference load: the record store and the quota store are its SQLite files", () => {
    const config = parseConfig(
      `${STARTER_STORAGE}
server:
  port: 8321
  host: null
  quota:
    kvstore: {backend: kv_default, namespace: quota}
    anonymous_max_requests: 5
    authenticated_max_requests: 50
    period: day
`,
      "run.yaml",
      {},
    );
    const dir = `${homedir()}/.llama/distributions/starter`;
    assert.deepEqual(config.storage, { type: "sqlite", db_path: `${dir}/kvstore.db` });
    assert.deepEqual(config.server.quota?.kvstore, { type: "sqlite", db_path: `${dir}/kvstore.db`, namespace: "quota" });
    assert.equal(config.server.quota?.anonymous_max_requests, 5);
    assert.equal(config.server.host, "127.0.0.1");
  });

  test("a kv_redis backend becomes the Redis quota store", () => {
    const config = parseConfig(
      `
storage:
  backends:
    kv_default: {type: kv_sqlite, db_path: /var/lib/tollgate/kv.db}
    kv_redis:
      type: kv_redis
      host: \${env.REDIS_HOST:=localhost}
      port: \${env.REDIS_PORT:=6380}
server:
  quota: {kvstore: {backend: kv_redis, namespace: quota}}
`,
      "run.yaml",
      {},
    );
    assert.deepEqual(config.server.quota?.kvstore, { type: "redis", host: "localhost", port: 6380, namespace: "quota", command_timeout_ms: 1000 });
    assert.deepEqual(config.storage, { type: "sqlite", db_path: "/var/lib/tollgate/kv.db" });
  });

  test("a kv_postgres metadata backend becomes the PostgreSQL record store, password encoded", () => {
    const config = parseConfig(
      `
storage:
  backends:
    kv_default: {type: kv_postgres, host: db.internal, port: 5433, db: stack, user: llama, password: "p@ss:w/rd", ssl_mode: require}
    sql_default: {type: sql_postgres, host: db.internal, user: llama, password: x, pool_size: 10}
`,
      "run.yaml",
      {},
    );
    assert.deepEqual(config.storage, { type: "postgres", url: "postgres://llama:p%40ss%3Aw%2Frd@db.internal:5433/stack?sslmode=require" });
  });

  test("with a Redis metadata backend, the record store is the SQL backend of the SQL stores", () => {
    const config = parseConfig(
      `
storage:
  backends:
    kv_default: {type: kv_redis, host: redis}
    sql_default: {type: sql_sqlite, db_path: /data/sql.db}
  stores:
    metadata: {backend: kv_default, namespace: registry}
`,
      "run.yaml",
      {},
    );
    assert.deepEqual(config.storage, { type: "sqlite", db_path: "/data/sql.db" });
  });

  test("Tollgate's own storage and kvstore forms keep working", () => {
    const config = parseConfig(
      "storage: {type: postgres, url: 'postgres://u@h/db'}\nserver: {quota: {kvstore: {type: sqlite, db_path: /tmp/q.db}}}",
      "tollgate.yaml",
      {},
    );
    assert.deepEqual(config.storage, { type: "postgres", url: "postgres://u@h/db" });
    assert.equal(config.server.quota?.kvstore.type, "sqlite");
  });

  test("a quota reference to a backend that is not there names server.quota.kvstore.backend and the backends there are", () => {
    const issues = issuesOf(`${STARTER_STORAGE}\nserver: {quota: {kvstore: {backend: kv_quota, namespace: quota}}}`);
    assert.equal(issues.length, 1);
    assert.match(issues[0]!, /^server\.quota\.kvstore\.backend: unknown backend 'kv_quota'; storage\.backends has kv_default, sql_default/);
  });

  test("a quota reference without storage.backends says where the backend must be declared", () => {
    const issues = issuesOf("server: {quota: {kvstore: {backend: kv_default, namespace: quota}}}");
    assert.match(issues[0]!, /^server\.quota\.kvstore\.backend: backend 'kv_default' needs the top-level storage\.backends/);
  });

  test("a quota reference to a PostgreSQL backend is refused with the reason", () => {
    const issues = issuesOf("storage: {backends: {kv_default: {type: kv_postgres, user: u}}}\nserver: {quota: {kvstore: {backend: kv_default, namespace: quota}}}");
    assert.match(issues[0]!, /^server\.quota\.kvstore\.backend: backend 'kv_default' is kv_postgres: Tollgate keeps quota counters in SQLite or Redis/);
  });

  test("a store reference to a missing backend names its path", () => {
    const issues = issuesOf("storage: {backends: {kv_default: {type: kv_sqlite, db_path: /x.db}}, stores: {metadata: {backend: kv_registry, namespace: registry}}}");
    assert.match(issues[0]!, /^storage\.stores\.metadata\.backend: unknown backend 'kv_registry'/);
  });

  test("backends Tollgate cannot keep records in are refused at storage.backends", () => {
    const issues = issuesOf("storage: {backends: {kv_default: {type: kv_redis}}}");
    assert.match(issues[0]!, /^storage\.backends: Tollgate keeps its keys and resource owners in SQLite or PostgreSQL/);
  });

  test("a malformed backend names its path inside storage.backends", () => {
    const issues = issuesOf("storage: {backends: {kv_default: {type: kv_sqlite, dbpath: /x.db}}}");
    assert.ok(issues.some((i) => i.startsWith("storage.backends.kv_default.db_path: required")), issues.join("\n"));
    assert.ok(issues.some((i) => i.startsWith("storage.backends.kv_default.dbpath: unknown key")), issues.join("\n"));
  });

  test("an unknown storage type still names storage.type", () => {
    assert.ok(issuesOf("storage: {type: mysql}").some((i) => i.startsWith("storage.type: ")));
  });

  test("server.auth with only a route_policy loads: no provider", () => {
    const config = parseConfig("server: {auth: {route_policy: [{permit: {paths: '/v1/models*'}}]}}", "run.yaml", {});
    assert.equal(config.server.auth?.provider_config, undefined);
    assert.equal(config.server.auth?.route_policy.length, 1);
  });

  test("server.auth without a provider is refused when something needs a user", () => {
    assert.match(issuesOf("server: {auth: {}}")[0]!, /^server\.auth\.provider_config: required/);
    const issues = issuesOf("server: {auth: {route_policy: [{permit: {paths: '*'}}], access_policy: [{permit: {actions: [read]}}]}}");
    assert.match(issues[0]!, /^server\.auth\.provider_config: required with access_policy or required_scopes/);
  });
});
