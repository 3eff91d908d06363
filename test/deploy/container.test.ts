import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import OpenAI from "openai";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { REPO } from "../support/gateway.js";
import { LABEL, baseImages, composeCommand, docker, dockerAsync, poll, requireDocker, run } from "./docker.js";

// The image and the compose stack, built and run for real where a Docker
// daemon answers (scripts/ci-docker.sh starts one in CI; docs/deploy.md):
// the build from a clean checkout, its size and user, a read-only container
// serving the openai client with a key from `docker exec ... tollgate keys
// create`, SIGHUP reloads, `docker stop` draining a stream without --init,
// and the compose stack with two gateway replicas sharing exact quotas and
// keeping its keys across `down` and `up`. Everything started carries the
// label LABEL=RUN and is removed after, also when a test fails.

const RUN = `${process.pid}-${Date.now()}`;
const TAG = `tollgate-test:${RUN}`;
/** Tollgate's layers above its base image may weigh this much at most (issue 20). */
const MAX_IMAGE_MB = 60;
const SHUTDOWN_TIMEOUT_MS = 20_000;

const cleanups: (() => void)[] = [];
after(() => {
  for (const cleanup of cleanups.reverse()) cleanup();
});
const quietly = (...args: string[]) => void run(["docker", ...args], { timeoutMs: 120_000 });

/** The Dockerfile's base image (`ARG NODE_IMAGE=...`). */
function baseImage(): string {
  const [, image] = /^ARG NODE_IMAGE=(\S+)/m.exec(readFileSync(join(REPO, "Dockerfile"), "utf8")) ?? [];
  assert.ok(image, "the Dockerfile names no NODE_IMAGE");
  return image;
}

let built: string | undefined;
/**
 * The image, built once for this file from a clean checkout: the files git
 * knows of in this tree (tracked, or new and not ignored), as a tar stream,
 * so that nothing of this machine (node_modules, dist, data) can reach it.
 */
function image(): string {
  if (built) return built;
  baseImages(); // the base image, made locally where no registry answers
  // `git ls-files` names deleted files too until they are committed: tar passes over them.
  const r = run(["sh", "-c", `git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | docker build -q -t ${TAG} -`], { cwd: REPO, timeoutMs: 900_000 });
  assert.equal(r.status, 0, `docker build exited ${r.status}\n${r.stderr}`);
  cleanups.push(() => quietly("rmi", TAG));
  built = TAG;
  return TAG;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A folder of this test's that uid 1000 inside a container can read. */
function sharedFolder(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeConfig(dir: string, config: unknown): void {
  writeFileSync(join(dir, "tollgate.yaml"), stringifyYaml(config), { mode: 0o644 });
}

interface Proc {
  pid: number;
  ppid: number;
  state: string;
  command: string;
}

/** The container's processes, read from its /proc by its own node. */
function processes(id: string): Proc[] {
  const script = `const fs = require("fs");
const out = [];
for (const d of fs.readdirSync("/proc")) {
  if (!/^\\d+$/.test(d)) continue;
  try {
    const stat = fs.readFileSync("/proc/" + d + "/stat", "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out.push({ pid: Number(d), ppid: Number(rest[1]), state: rest[0], command: fs.readFileSync("/proc/" + d + "/cmdline", "utf8").split("\\0").join(" ").trim() });
  } catch {}
}
console.log(JSON.stringify(out));`;
  return (JSON.parse(docker(["exec", id, "node", "-e", script])) as Proc[]).filter((p) => !p.command.includes("node -e"));
}

describe("the image, built and run", { timeout: 1_200_000 }, () => {
  // The first test builds the image: up to 15 minutes on a cold machine (scripts/test.mjs gives a test 2 by default).
  test("builds from a clean checkout, adds under 60 MB to its base, runs as node and holds no dev dependency (npm ls --omit=dev)", { timeout: 900_000 }, (t) => {
    if (!requireDocker(t)) return;
    const tag = image();
    const size = (ref: string) => Number(docker(["image", "inspect", "--format", "{{.Size}}", ref]));
    const addedMb = (size(tag) - size(baseImage())) / 1024 / 1024;
    // Reported in every run (scripts/ci-docker.sh prints it).
    console.error(`image size: ${addedMb.toFixed(1)} MB above ${baseImage()}`);
    assert.ok(addedMb < MAX_IMAGE_MB, `Tollgate's layers weigh ${addedMb.toFixed(1)} MB above ${baseImage()}`);

    assert.equal(docker(["image", "inspect", "--format", "{{.Config.User}}", tag]), "node");
    assert.equal(docker(["run", "--rm", "--entrypoint", "id", tag, "-u"]), "1000");

    // Everything installed in /app/node_modules is what a production install needs, and nothing more.
    const npm = (...args: string[]) => run(["docker", "run", "--rm", "--entrypoint", "npm", tag, "ls", "--all", "--parseable", ...args]);
    const production = npm("--omit=dev");
    assert.equal(production.status, 0, `npm ls --omit=dev inside the image: ${production.stderr}`);
    const installed = npm();
    const lines = (r: { stdout: string }) => new Set(r.stdout.split("\n").filter((l) => l.includes("/node_modules/")));
    const extra = [...lines(installed)].filter((p) => !lines(production).has(p));
    assert.deepEqual(extra, [], "installed in the image but not a production dependency");
    const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { devDependencies: Record<string, string> };
    // A dev dependency that a production one also needs is installed by right; the dev-only ones never
    // (fastify among them: only the tollgate/fastify adapter uses it, and its users bring their own).
    const devOnly = Object.keys(pkg.devDependencies).filter((name) => !lines(production).has(`/app/node_modules/${name}`));
    assert.ok(devOnly.includes("typescript"), "typescript is a dev-only dependency: the scan would see one");
    const devInside = devOnly.filter((name) => lines(installed).has(`/app/node_modules/${name}`));
    assert.deepEqual(devInside, []);
    assert.ok(!lines(installed).has("/app/node_modules/fastify"), "fastify is a peer dependency of the adapter, not installed");
    assert.ok(lines(installed).has("/app/node_modules/jose"), "the scan found no production dependency either");
  });

  // One gateway for the three tests below: read-only, the data volume, a
  // config folder mounted from this machine, two workers, no --init.
  let gateway: { id: string; url: string; config: string; base: Record<string, unknown> } | undefined;

  async function startGateway(t: TestContext): Promise<typeof gateway> {
    if (gateway) return gateway;
    const tag = image();
    const network = docker(["network", "create", "--label", `${LABEL}=${RUN}`, `tollgate-test-${RUN}`]);
    cleanups.push(() => quietly("network", "rm", network));
    const volume = docker(["volume", "create", "--label", `${LABEL}=${RUN}`]);
    cleanups.push(() => quietly("volume", "rm", "-f", volume));

    const upstream = docker([
      "run", "-d", "--label", `${LABEL}=${RUN}`, "--network", network, "--network-alias", "upstream", "--read-only",
      "-e", "TOLLGATE_HEALTHCHECK_URL=http://127.0.0.1:8000/health",
      "--entrypoint", "node", tag, "dist/demo/upstream.js", "--host", "0.0.0.0", "--port", "8000",
    ]);
    cleanups.push(() => quietly("rm", "-f", "-v", upstream));

    const config = sharedFolder("tollgate-config-");
    const base = {
      server: {
        host: "0.0.0.0",
        port: 8321,
        shutdown_timeout_ms: SHUTDOWN_TIMEOUT_MS,
        auth: { provider_config: { type: "api_key" } },
        quota: { kvstore: { type: "sqlite", db_path: "/app/data/quota.db" }, authenticated_max_requests: 1000, period: "day" },
      },
      upstream: { url: "http://upstream:8000" },
      storage: { type: "sqlite", db_path: "/app/data/tollgate.db" },
    };
    writeConfig(config, base);
    const id = docker([
      "run", "-d", "--label", `${LABEL}=${RUN}`, "--network", network, "--read-only",
      "-v", `${volume}:/app/data`, "-v", `${config}:/app/config:ro`, "-p", "127.0.0.1::8321",
      tag, "serve", "--config", "/app/config/tollgate.yaml", "--workers", "2",
    ]);
    cleanups.push(() => quietly("rm", "-f", "-v", id));
    t.diagnostic(`gateway container ${id.slice(0, 12)}`);
    const address = docker(["port", id, "8321/tcp"]).split("\n")[0]!;
    gateway = { id, url: `http://${address}`, config, base };
    return gateway;
  }

  test("runs read-only with the /app/data volume, as uid 1000, and its HEALTHCHECK turns healthy", { timeout: 900_000 }, async (t) => {
    if (!requireDocker(t)) return;
    const { id, url } = (await startGateway(t))!;
    assert.equal(docker(["inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Init}}", id]), "true <nil>");
    const status = await poll("the HEALTHCHECK reports healthy", 120_000, () => {
      const health = docker(["inspect", "--format", "{{.State.Health.Status}}", id]);
      assert.notEqual(health, "unhealthy", docker(["logs", "--tail", "30", id]));
      return health === "healthy" ? health : undefined;
    });
    assert.equal(status, "healthy");
    assert.deepEqual(await (await fetch(`${url}/health`)).json(), { status: "OK" });
    assert.equal(docker(["exec", id, "id", "-u"]), "1000");
    // The data volume took the first admin key's database; the rest of the file system is read-only.
    assert.match(run(["docker", "logs", id]).stderr, /Tollgate created the first API key/);
    const write = run(["docker", "exec", id, "touch", "/app/dist/written"]);
    assert.notEqual(write.status, 0);
    assert.match(write.stderr, /Read-only file system/);
    docker(["exec", id, "touch", "/app/data/written"]);
  });

  test("a key from `docker exec ... tollgate keys create` serves the openai client, and `docker kill --signal HUP` reloads the mounted config", { timeout: 300_000 }, async (t) => {
    if (!requireDocker(t)) return;
    const { id, url, config, base } = (await startGateway(t))!;
    const key = docker(["exec", id, "tollgate", "keys", "create", "--config", "/app/config/tollgate.yaml", "--principal", "alice", "--attr", "roles=user"]);
    assert.match(key, /^tg_/);
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
    const ask = () => client.chat.completions.create({ model: "demo-small", messages: [{ role: "user", content: "hello from the host" }] });
    assert.equal((await ask()).choices[0]?.message.content, "You said: hello from the host");
    await assert.rejects(new OpenAI({ baseURL: `${url}/v1`, apiKey: "tg_not-a-key", maxRetries: 0 }).models.list(), { status: 401 });

    // One request a day from now on: written in place (the folder is mounted), not yet reloaded...
    const quota = base.server as { quota: Record<string, unknown> };
    writeConfig(config, { ...base, server: { ...quota, quota: { ...quota.quota, authenticated_max_requests: 1 } } });
    assert.equal((await ask()).choices.length, 1, "the file alone changes nothing: no reload before SIGHUP");
    // ...until SIGHUP to PID 1, which every worker obeys.
    docker(["kill", "--signal", "HUP", id]);
    await poll("the reloaded quota refuses on every worker", 30_000, async () => {
      const statuses = await Promise.all(Array.from({ length: 6 }, () => ask().then(() => 200, (e: { status?: number }) => e.status)));
      return statuses.every((s) => s === 429) ? statuses : undefined;
    });
    assert.match(run(["docker", "logs", id]).stdout, /configuration reloaded/);

    writeConfig(config, base);
    docker(["kill", "--signal", "HUP", id]);
    await poll("the restored quota admits again", 30_000, () => ask().then(() => true, () => undefined));
  });

  test("PID 1 reaps a dead worker and `docker stop` drains a stream in flight, exiting 0 within shutdown_timeout_ms, without --init", { timeout: 300_000 }, async (t) => {
    if (!requireDocker(t)) return;
    const { id, url } = (await startGateway(t))!;
    const key = docker(["exec", id, "tollgate", "keys", "create", "--config", "/app/config/tollgate.yaml", "--principal", "bob"]);

    const before = processes(id);
    assert.match(before.find((p) => p.pid === 1)!.command, /^node dist\/cli\/main\.js serve/, "the gateway is PID 1");
    const workers = before.filter((p) => p.ppid === 1);
    assert.equal(workers.length, 2, JSON.stringify(before));
    docker(["exec", id, "node", "-e", `process.kill(${workers[0]!.pid}, "SIGKILL")`]);
    const replaced = await poll("the supervisor replaces the killed worker and reaps it", 30_000, () => {
      const now = processes(id);
      const live = now.filter((p) => p.ppid === 1 && p.state !== "Z");
      return live.length === 2 && !now.some((p) => p.pid === workers[0]!.pid) ? now : undefined;
    });
    assert.deepEqual(replaced.filter((p) => p.state === "Z"), [], "a zombie: PID 1 does not reap");

    // A stream of 30 words, one every 200 ms: about 6 s in flight.
    const words = Array.from({ length: 30 }, (_, i) => `w${i}`).join(" ");
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 60_000, defaultHeaders: { "x-demo-chunk-delay-ms": "200" } });
    await poll("the new worker serves", 30_000, () => client.models.list().then(() => true, () => undefined));
    const stream = await client.chat.completions.create({ model: "demo-small", stream: true, messages: [{ role: "user", content: words }] });
    let text = "";
    let finish: string | null | undefined;
    let stopping: Promise<{ status: number | null; ms: number }> | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (!stopping && text.length > 0) {
        const started = Date.now();
        // -t above shutdown_timeout_ms: a gateway that ignored SIGTERM would be killed (137) after 60 s.
        stopping = dockerAsync(["stop", "-t", "60", id], 120_000).then((r) => ({ status: r.status, ms: Date.now() - started }));
      }
    }
    assert.ok(stopping, "the stream sent nothing");
    assert.equal(text, `You said: ${words}`, "the stream in flight was cut");
    assert.equal(finish, "stop");
    const stopped = await stopping;
    assert.equal(stopped.status, 0);
    assert.equal(docker(["inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", id]), "0 false");
    assert.ok(stopped.ms < SHUTDOWN_TIMEOUT_MS, `docker stop took ${stopped.ms} ms`);
    t.diagnostic(`docker stop: ${stopped.ms} ms with a stream in flight`);
  });
});

// ------------------------------------------------------------ compose stack

interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition?: string }>;
  [key: string]: unknown;
}

describe("the compose stack, up", { timeout: 1_200_000 }, () => {
  test("Redis, PostgreSQL, the demo upstream and two gateway replicas with --workers 2: exact quotas across both, keys kept across down and up", { timeout: 1_200_000 }, async (t) => {
    if (!requireDocker(t, { compose: true })) return;
    const tag = image();
    const composeFile = join(REPO, "deploy/compose.yaml");
    const stack = parseYaml(readFileSync(composeFile, "utf8")) as { services: Record<string, ComposeService> };
    const [port, replicaPort] = [await freePort(), await freePort()];

    // deploy/compose.yaml as the docs run it, plus, in an override file: this
    // run's image (built above; nothing to build again), a quota small enough
    // to count, and a second replica of the tollgate service on its own port,
    // started once the first is healthy (so the first writes the admin key file).
    const scratch = sharedFolder("tollgate-compose-");
    const config = parseYaml(readFileSync(join(REPO, "deploy/tollgate.yaml"), "utf8")) as { server: { quota: Record<string, unknown> } };
    config.server.quota.authenticated_max_requests = 25;
    delete config.server.quota.limits;
    writeFileSync(join(scratch, "tollgate.yaml"), stringifyYaml(config), { mode: 0o644 });
    const mount = `${join(scratch, "tollgate.yaml")}:/app/config/tollgate.yaml:ro`;
    const { build: _build, ports: _ports, ...tollgate } = stack.services.tollgate!;
    // Named volumes for the image's /app/data, so that `down -v` leaves no anonymous one behind.
    const override = {
      services: {
        upstream: { image: tag, volumes: ["upstream-data:/app/data"] },
        tollgate: { image: tag, volumes: [mount, "tollgate-data:/app/data"] },
        "tollgate-replica": {
          ...tollgate,
          image: tag,
          volumes: [mount, "replica-data:/app/data"],
          ports: [`127.0.0.1:${replicaPort}:8321`],
          depends_on: { ...tollgate.depends_on, tollgate: { condition: "service_healthy" } },
        },
      },
      volumes: { "upstream-data": {}, "tollgate-data": {}, "replica-data": {} },
    };
    const overrideFile = join(scratch, "compose.override.yaml");
    writeFileSync(overrideFile, stringifyYaml(override));

    const project = `tollgate-test-${RUN.replace(/\W/g, "")}`;
    const env = { ...process.env, ...baseImages(), TOLLGATE_PORT: `127.0.0.1:${port}`, POSTGRES_PASSWORD: `test${Date.now()}` };
    const composeCli = composeCommand()!;
    const compose = (args: string[], timeoutMs = 300_000) => {
      const r = run([...composeCli, "-p", project, "-f", composeFile, "-f", overrideFile, ...args], { env, timeoutMs });
      assert.equal(r.status, 0, `${composeCli.join(" ")} ${args.join(" ")} exited ${r.status}\n${r.stderr}`);
      return r.stdout;
    };
    cleanups.push(() => void run([...composeCli, "-p", project, "-f", composeFile, "-f", overrideFile, "down", "-v", "--remove-orphans", "-t", "40"], { env, timeoutMs: 300_000 }));

    /** `up -d`, then every container healthy (docker-compose 1.x has no `up --wait`). */
    const up = async () => {
      compose(["up", "-d"]);
      return poll("every service of the stack healthy", 240_000, () => {
        const ids = compose(["ps", "-q"]).split("\n").filter(Boolean);
        const health = ids.map((id) => docker(["inspect", "--format", "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", id]));
        assert.ok(!health.some((h) => / (exited|dead)|unhealthy/.test(h)), `${health.join("\n")}\n${run([...composeCli, "-p", project, "-f", composeFile, "-f", overrideFile, "logs", "--tail", "20"], { env }).stdout}`);
        return ids.length === 5 && health.every((h) => h.endsWith(" running healthy")) ? health : undefined;
      });
    };
    t.diagnostic(`${(await up()).length} services healthy`);

    // The docs' steps: the first admin key from its 0600 file, a user key from a one-off container.
    const admin = compose(["exec", "-T", "tollgate", "cat", "/app/data/admin-key"]);
    assert.match(admin, /^tg_/);
    const key = compose(["run", "--rm", "-T", "tollgate", "keys", "create", "--config", "/app/config/tollgate.yaml", "--principal", "alice", "--attr", "roles=user"]);
    assert.match(key, /^tg_/);
    assert.equal(docker(["inspect", "--format", "{{.Config.Cmd}}", compose(["ps", "-q", "tollgate-replica"])]).includes("--workers 2"), true);

    const gateways = [`http://127.0.0.1:${port}`, `http://127.0.0.1:${replicaPort}`];
    const chat = (base: string, bearer: string) =>
      fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "hello" }] }),
      }).then(async (res) => ({ status: res.status, body: await res.text() }));
    assert.equal((await fetch(`${gateways[1]}/v1/models`)).status, 401);

    // 60 requests at once, alternately to each replica (two workers each): exactly the 25 of the quota pass.
    const statuses = await Promise.all(Array.from({ length: 60 }, (_, i) => chat(gateways[i % 2]!, key)));
    const admitted = statuses.filter((s) => s.status === 200);
    assert.deepEqual(
      { admitted: admitted.length, refused: statuses.filter((s) => s.status === 429).length },
      { admitted: 25, refused: 35 },
      JSON.stringify(statuses.filter((s) => s.status !== 200 && s.status !== 429)),
    );
    assert.match(admitted[0]!.body, /You said: hello/);
    for (const base of gateways) assert.equal((await chat(base, admin)).status, 200);

    // `down` keeps the named volumes: after `up`, PostgreSQL still has the keys and Redis the counts.
    compose(["down", "-t", "40"]);
    assert.equal(compose(["ps", "-q"]), "");
    await up();
    for (const base of gateways) {
      assert.equal((await chat(base, admin)).status, 200, "the admin key is gone after down and up");
      assert.equal((await chat(base, key)).status, 429, "alice's key or her spent quota is gone after down and up");
    }
  });
});
