import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { Redis } from "ioredis";
import { parse as parseYaml } from "yaml";
import { loadConfig, parseConfig } from "../../src/core/config/load.js";
import { clientKey } from "../../src/core/quota/client-key.js";
import { REPO, distFile } from "../support/gateway.js";
import { scopedPostgres } from "../support/postgres.js";
import { requireService } from "../support/services.js";
import { composeCommand } from "./docker.js";
import { execForm, parseDockerfile, type Stage } from "../support/dockerfile.js";

// The deployment files (Dockerfile, .dockerignore, deploy/, docs/deploy.md):
// static checks that catch the mistakes a broken image or stack would show
// only on someone's server, the compose stack's config run for real against
// Redis and PostgreSQL from a production-only install. The image and the
// stack built and run: container.test.ts.

const repoFile = (path: string) => join(REPO, path);
const read = (path: string) => readFileSync(repoFile(path), "utf8");

// ---------------------------------------------------------------- Dockerfile

const dockerfile = parseDockerfile(read("Dockerfile"));
const runtime = dockerfile.at(-1)!;
const inRuntime = (name: string) => runtime.instructions.filter((i) => i.name === name);

/** The stage a `COPY --from=X` names, by alias or index. */
function stageNamed(ref: string): Stage | undefined {
  return dockerfile.find((s, i) => s.alias === ref || String(i) === ref);
}

/** `COPY [--from=X] [--chown=...] src... dest`, split. */
function copyParts(args: string): { from: string | undefined; sources: string[]; dest: string } {
  const words = execForm(args) ?? args.split(/\s+/);
  const from = words.find((w) => w.startsWith("--from="))?.slice("--from=".length);
  const paths = words.filter((w) => !w.startsWith("--"));
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
}

describe("the Dockerfile", () => {
  test("builds in at least two stages, and the runtime stage is a Node image", () => {
    assert.ok(dockerfile.length >= 2, `expected a multi-stage build, found ${dockerfile.length} FROM`);
    const text = read("Dockerfile");
    const image = runtime.image.replace(/^\$\{(\w+)\}$/, (_, name: string) => new RegExp(`ARG ${name}=(\\S+)`).exec(text)?.[1] ?? "");
    assert.match(image, /^node:\d+/);
    // node:sqlite is built in from 22.5: an older runtime would need the native better-sqlite3 the image omits.
    assert.ok(Number(/^node:(\d+)/.exec(image)![1]) >= 24, `${image}: the runtime needs node:sqlite (Node >= 22.5; 24 is the LTS)`);
  });

  test("runs as a non-root user, set before the ENTRYPOINT", () => {
    const names = runtime.instructions.map((i) => i.name);
    const user = runtime.instructions.findLast((i) => i.name === "USER");
    assert.ok(user, "the runtime stage sets no USER: the gateway would run as root");
    assert.doesNotMatch(user.args, /^(root|0)(:|$)/);
    const entrypoint = names.indexOf("ENTRYPOINT");
    assert.ok(entrypoint >= 0, "no ENTRYPOINT");
    assert.ok(names.lastIndexOf("USER") < entrypoint);
    // Nothing after the USER switches back to root.
    assert.ok(!runtime.instructions.slice(names.lastIndexOf("USER") + 1).some((i) => i.name === "USER"));
  });

  test("starts the built CLI, which exists after the build", () => {
    const [entrypoint] = inRuntime("ENTRYPOINT");
    assert.deepEqual(execForm(entrypoint!.args), ["node", "dist/cli/main.js"]);
    assert.ok(existsSync(distFile("cli/main.js")));
    const cmd = execForm(inRuntime("CMD")[0]!.args)!;
    assert.equal(cmd[0], "serve");
    // The default config the CMD names is put in place by a COPY of the runtime stage.
    const configPath = cmd[cmd.indexOf("--config") + 1]!;
    const copied = inRuntime("COPY").map((c) => copyParts(c.args)).find((c) => resolve("/app", c.dest) === configPath);
    assert.ok(copied, `nothing copies ${configPath} into the image`);
    assert.equal(copied.from, undefined);
    const image = loadConfig(repoFile(copied.sources[0]!), {});
    assert.equal(image.server.host, "0.0.0.0", "inside a container the gateway must listen on every interface");
    assert.equal(image.storage.type, "sqlite");
    if (image.storage.type === "sqlite") assert.match(image.storage.db_path, /^\/app\/data\//, "SQLite files belong in the writable /app/data volume");
  });

  test("installs only production dependencies in the runtime image, without lifecycle scripts", () => {
    const modules = inRuntime("COPY").map((c) => copyParts(c.args)).find((c) => c.sources.some((s) => /node_modules\/?$/.test(s)));
    assert.ok(modules?.from, "the runtime stage gets node_modules from no stage");
    const installStage = stageNamed(modules.from)!;
    const install = installStage.instructions.find((i) => i.name === "RUN" && /\bnpm (ci|install)\b/.test(i.args));
    assert.ok(install, `stage ${modules.from} installs nothing`);
    assert.match(install.args, /--omit=dev\b/);
    // `prepare` runs tsc, a dev dependency: without this the install fails.
    assert.match(install.args, /--ignore-scripts\b/);
    // The runtime stage itself installs nothing else.
    assert.ok(!inRuntime("RUN").some((i) => /\bnpm (ci|install)\b/.test(i.args)));
    // dist comes from a stage that builds it.
    const dist = inRuntime("COPY").map((c) => copyParts(c.args)).find((c) => c.sources.some((s) => /dist\/?$/.test(s)));
    assert.ok(dist?.from, "the runtime stage gets dist from no stage");
    assert.ok(stageNamed(dist.from)!.instructions.some((i) => i.name === "RUN" && /npm run build/.test(i.args)));
  });

  test("makes /app/data writable by its user, exposes 8321 and checks health with node", () => {
    assert.ok(inRuntime("RUN").some((i) => /chown\s+node(:node)?\s+\/app\/data/.test(i.args)));
    assert.ok(inRuntime("EXPOSE").some((i) => i.args.split(/\s+/).includes("8321")));
    const [healthcheck] = inRuntime("HEALTHCHECK");
    assert.ok(healthcheck, "no HEALTHCHECK");
    const command = execForm(healthcheck.args.replace(/^.*?\bCMD\s+/, ""));
    // Slim images have no curl or wget: node is the only client there.
    assert.equal(command?.[0], "node");
    assert.match(healthcheck.args, /http:\/\/127\.0\.0\.1:8321\/health/);
  });

  test("the stage that runs `npm run build` holds every file the build script names", () => {
    const build = dockerfile.find((stage) => stage.instructions.some((i) => i.name === "RUN" && /npm run build/.test(i.args)))!;
    const copied = build.instructions.filter((i) => i.name === "COPY" && copyParts(i.args).from === undefined).flatMap((i) => copyParts(i.args).sources.map((s) => s.replace(/\/$/, "")));
    const script = (JSON.parse(read("package.json")) as { scripts: Record<string, string> }).scripts.build!;
    const named = script.match(/[\w.-]+(?:\/[\w.-]+)*\.(?:json|mjs|js|ts)\b/g) ?? [];
    assert.ok(named.length > 0, `no file found in the build script: ${script}`);
    for (const file of named) assert.ok(copied.some((c) => file === c || file.startsWith(`${c}/`)), `the build script names ${file}, which the build stage never copies`);
  });

  test("copies only files that exist and that .dockerignore lets into the build context", () => {
    const ignored = dockerignore();
    for (const stage of dockerfile) {
      for (const copy of stage.instructions.filter((i) => i.name === "COPY" || i.name === "ADD")) {
        const { from, sources } = copyParts(copy.args);
        if (from !== undefined) continue;
        for (const source of sources) {
          assert.ok(existsSync(repoFile(source)), `COPY ${source}: no such file`);
          assert.ok(!ignored(source.replace(/\/$/, "")), `COPY ${source}: excluded by .dockerignore`);
        }
      }
    }
    // This machine's installs and data never reach the daemon.
    for (const path of ["node_modules", "dist", "data", ".git", "test", ".env", "deploy/.env", "deploy/tls/key.pem"]) assert.ok(ignored(path), `${path} is not in .dockerignore`);
  });
});

/** A matcher for .dockerignore: patterns are relative to the context root; a match excludes the path and what is under it. */
function dockerignore(): (path: string) => boolean {
  const rules = read(".dockerignore")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => {
      const negated = l.startsWith("!");
      const glob = (negated ? l.slice(1) : l).replace(/^\/+|\/+$/g, "");
      // Go's filepath.Match plus `**` (any number of directories), as Docker reads it.
      const source = glob.replace(/\*\*\/|\*\*|\*|\?|[.+^${}()|[\]\\]/g, (token) =>
        token === "**/" ? "(?:.*/)?" : token === "**" ? ".*" : token === "*" ? "[^/]*" : token === "?" ? "[^/]" : `\\${token}`,
      );
      return { negated, regex: new RegExp(`^${source}(/.*)?$`) };
    });
  return (path) => rules.reduce((excluded, rule) => (rule.regex.test(path) ? !rule.negated : excluded), false);
}

// ------------------------------------------------------------ compose stack

interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  entrypoint?: string[];
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition?: string }>;
  healthcheck?: { test?: string[] };
  volumes?: string[];
  ports?: string[];
}

const composeFile = repoFile("deploy/compose.yaml");
const compose = parseYaml(readFileSync(composeFile, "utf8")) as { services: Record<string, ComposeService> };
const service = (name: string) => compose.services[name]!;

/** Compose's own interpolation (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`), here with an empty shell environment. */
function interpolate(text: string, env: Record<string, string> = {}): string {
  return text.replace(/\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}/g, (match, name: string | undefined, op: string | undefined, fallback = "") => {
    if (match === "$$") return "$";
    const value = env[name!];
    if (op === ":-") return value ? value : fallback;
    if (op === "-") return value ?? fallback;
    return value ?? "";
  });
}

/** The tollgate service's environment as the container gets it, with every compose default applied. */
function tollgateEnvironment(): Record<string, string> {
  return Object.fromEntries(Object.entries(service("tollgate").environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]));
}

/** `./tollgate.yaml:/app/config/tollgate.yaml:ro` → host path (absolute) and container path. */
function bindMounts(s: ComposeService): { host: string; container: string }[] {
  return (s.volumes ?? [])
    .map((v) => v.split(":"))
    .filter(([host]) => host!.startsWith(".") || host!.startsWith("/"))
    .map(([host, container]) => ({ host: resolve(dirname(composeFile), host!), container: container! }));
}

function mountedConfig(): { host: string; container: string } {
  const command = service("tollgate").command ?? execForm(runtime.instructions.find((i) => i.name === "CMD")!.args)!;
  const path = command[command.indexOf("--config") + 1]!;
  const mount = bindMounts(service("tollgate")).find((m) => m.container === path);
  assert.ok(mount, `the tollgate service mounts nothing at ${path}, the config its command names`);
  return mount;
}

describe("deploy/compose.yaml", () => {
  test("runs redis, postgres, an upstream and tollgate", () => {
    assert.deepEqual(Object.keys(compose.services).sort(), ["postgres", "redis", "tollgate", "upstream"]);
    // The official images, unless TOLLGATE_REDIS_IMAGE / TOLLGATE_POSTGRES_IMAGE name others (scripts/local-images.sh).
    assert.match(interpolate(service("redis").image ?? ""), /^redis:7/);
    assert.match(interpolate(service("postgres").image ?? ""), /^postgres:16/);
  });

  test("starts tollgate after its stores answer their health checks", () => {
    const depends = service("tollgate").depends_on ?? {};
    for (const name of ["redis", "postgres", "upstream"]) {
      assert.equal(depends[name]?.condition, "service_healthy", `tollgate does not wait for ${name} to be healthy`);
    }
    assert.ok(service("redis").healthcheck?.test?.join(" ").includes("redis-cli ping"));
    assert.ok(service("postgres").healthcheck?.test?.join(" ").includes("pg_isready"));
    // The upstream has no healthcheck of its own: it uses the image's, pointed at its port.
    const port = service("upstream").command![service("upstream").command!.indexOf("--port") + 1];
    assert.equal(service("upstream").environment?.TOLLGATE_HEALTHCHECK_URL, `http://127.0.0.1:${port}/health`);
  });

  test("builds tollgate and the upstream from this repository's Dockerfile", () => {
    for (const name of ["tollgate", "upstream"]) {
      const build = service(name).build;
      const context = resolve(dirname(composeFile), typeof build === "string" ? build : build?.context ?? ".");
      const file = typeof build === "object" && build.dockerfile ? build.dockerfile : "Dockerfile";
      assert.equal(context, resolve(REPO), `${name}: build context`);
      assert.ok(existsSync(join(context, file)));
    }
    assert.equal(service("upstream").image, service("tollgate").image, "one image for both, built once");
  });

  test("the upstream service runs the demo upstream that ships in the image, on every interface", () => {
    const entrypoint = service("upstream").entrypoint!;
    assert.deepEqual(entrypoint.slice(0, 1), ["node"]);
    assert.ok(existsSync(repoFile(entrypoint[1]!)), `${entrypoint[1]} is not built`);
    const command = service("upstream").command!;
    assert.equal(command[command.indexOf("--host") + 1], "0.0.0.0");
    // Its only imports are Node's: it needs nothing the production install lacks.
    assert.deepEqual(packageImports(readFileSync(repoFile(entrypoint[1]!), "utf8")).filter((s) => !isBuiltin(s)), []);
  });

  test("mounts an existing config, publishes its port, and sets every variable the config requires", () => {
    const mount = mountedConfig();
    assert.ok(existsSync(mount.host), `${relative(REPO, mount.host)} does not exist`);
    const text = readFileSync(mount.host, "utf8");
    const required = [...text.matchAll(/\$\{env\.(\w+)\}/g)].map((m) => m[1]!);
    const env = tollgateEnvironment();
    for (const name of required) assert.ok(env[name], `the config needs ${name}, which the tollgate service does not set`);
    const config = loadConfig(mount.host, env);
    const published = (service("tollgate").ports ?? []).map((p) => interpolate(p).split(":").at(-1));
    assert.ok(published.includes(String(config.server.port)), `publishes ${published.join(", ")}, the gateway listens on ${config.server.port}`);
  });

  test("deploy/tollgate.yaml validates, and names the stack's services with the stack's credentials", () => {
    const config = loadConfig(mountedConfig().host, tollgateEnvironment());
    assert.equal(config.server.host, "0.0.0.0", "inside a container the gateway must listen on every interface");
    assert.equal(config.server.auth?.provider_config?.type, "api_key");
    assert.ok((config.server.auth?.access_policy.length ?? 0) > 0, "the example has an access_policy");

    assert.equal(config.storage.type, "postgres");
    const database = new URL(config.storage.type === "postgres" ? config.storage.url : "");
    assert.equal(database.hostname, "postgres");
    const postgresEnv = Object.fromEntries(Object.entries(service("postgres").environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]));
    assert.equal(database.username, postgresEnv.POSTGRES_USER);
    assert.equal(decodeURIComponent(database.password), postgresEnv.POSTGRES_PASSWORD, "the gateway's password is not the one postgres is given");
    assert.equal(database.pathname, `/${postgresEnv.POSTGRES_DB}`);

    const kvstore = config.server.quota?.kvstore;
    assert.equal(kvstore?.type, "redis");
    assert.equal(new URL(kvstore.type === "redis" ? kvstore.url! : "").hostname, "redis");

    const upstream = new URL(config.upstream!.url);
    const command = service("upstream").command!;
    assert.equal(upstream.hostname, "upstream");
    assert.equal(upstream.port, command[command.indexOf("--port") + 1]);
  });

  test("passes `docker compose config` (or Debian's docker-compose 1.29), where compose is installed", (t) => {
    const command = composeCommand();
    if (!command) {
      const reason = "docker compose is not installed (neither the plugin nor docker-compose)";
      if (process.env.CI === "true") assert.fail(`${reason}; under CI=true this fails the run (scripts/docker-daemon.sh start installs it)`);
      console.error(`skipped: ${reason}`);
      t.skip(reason);
      return;
    }
    // `config` needs no daemon: it parses, interpolates and validates the file.
    const r = spawnSync(command[0]!, [...command.slice(1), "-f", composeFile, "config", "--quiet"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
  });
});

// ------------------------------------------------------------ docs/deploy.md

describe("docs/deploy.md", () => {
  const doc = read("docs/deploy.md");

  test("its YAML examples are valid configs", () => {
    const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((b) => /^(server|upstream|storage):/m.test(b));
    assert.ok(blocks.length >= 1);
    for (const block of blocks) {
      assert.doesNotThrow(() => parseConfig(block, "docs/deploy.md example", { ...tollgateEnvironment(), UPSTREAM_API_KEY: "sk-test" }), block);
    }
  });

  test("its commands name files that exist and the config path the stack mounts", () => {
    for (const [, file] of doc.matchAll(/docker compose -f (\S+)/g)) assert.ok(existsSync(repoFile(file!)), `${file} does not exist`);
    const keysCreate = [...doc.matchAll(/keys create --config (\S+)/g)].map((m) => m[1]);
    assert.ok(keysCreate.length > 0, "the doc shows how to create a key in the stack");
    for (const path of keysCreate) assert.equal(path, mountedConfig().container);
  });
});

// --------------------------------------------------- production dependencies

/** Package specifiers of the static and dynamic imports in built JavaScript (not in comments: tsc keeps imports at line starts). */
function packageImports(js: string, only: "static" | "dynamic" | "all" = "all"): string[] {
  const found = new Set<string>();
  if (only !== "dynamic") {
    for (const m of js.matchAll(/^\s*(?:import|export)\s(?:[^;"']*?\sfrom\s)?\s*["']([^"']+)["']/gm)) found.add(m[1]!);
  }
  if (only !== "static") {
    for (const m of js.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)) found.add(m[1]!);
  }
  return [...found].filter((s) => !s.startsWith(".") && !s.startsWith("/"));
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith("node:") || builtinModules.includes(specifier);
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageName(specifier: string): string {
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

function distFiles(dir = repoFile("dist")): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? distFiles(join(dir, e.name)) : e.name.endsWith(".js") ? [join(dir, e.name)] : [],
  );
}

/** Relative specifiers of the static and dynamic imports in built JavaScript. */
function relativeImports(js: string): string[] {
  const found = new Set<string>();
  for (const m of js.matchAll(/^\s*(?:import|export)\s(?:[^;"']*?\sfrom\s)?\s*["'](\.[^"']+)["']/gm)) found.add(m[1]!);
  for (const m of js.matchAll(/\bimport\(\s*["'](\.[^"']+)["']\s*\)/g)) found.add(m[1]!);
  return [...found];
}

/** Every dist/ file the given entry points load, statically or dynamically. */
function reachableFrom(entries: string[]): Set<string> {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file) || !existsSync(file)) return;
    seen.add(file);
    for (const specifier of relativeImports(readFileSync(file, "utf8"))) visit(resolve(dirname(file), specifier));
  };
  entries.forEach(visit);
  return seen;
}

const pkg = JSON.parse(read("package.json")) as {
  dependencies: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
};

describe("only production dependencies", () => {
  test("what the image runs (the CLI, the demo upstream) imports only dependencies; optional ones only dynamically", () => {
    distFile("cli/main.js"); // fails on a missing or stale build
    const problems: string[] = [];
    const served = reachableFrom([distFile("cli/main.js"), distFile("demo/upstream.js")]);
    assert.ok(served.size > 10, "the import scan found too little: has the build output changed shape?");
    for (const file of served) {
      const js = readFileSync(file, "utf8");
      for (const specifier of packageImports(js, "static")) {
        if (!isBuiltin(specifier) && !(packageName(specifier) in pkg.dependencies)) problems.push(`${relative(REPO, file)}: import "${specifier}"`);
      }
      for (const specifier of packageImports(js, "dynamic")) {
        const name = packageName(specifier);
        if (!isBuiltin(specifier) && !(name in pkg.dependencies) && !(name in (pkg.optionalDependencies ?? {}))) {
          problems.push(`${relative(REPO, file)}: import("${specifier}")`);
        }
      }
    }
    assert.deepEqual(problems, [], "the image would lack these: a production install (npm ci --omit=dev) does not have them");
  });

  test("the library's other modules import only dependencies and the frameworks they adapt (peer dependencies)", () => {
    const declared = { ...pkg.dependencies, ...pkg.optionalDependencies, ...pkg.peerDependencies };
    const problems = distFiles().flatMap((file) =>
      packageImports(readFileSync(file, "utf8"))
        .filter((s) => !isBuiltin(s) && !(packageName(s) in declared))
        .map((s) => `${relative(REPO, file)}: "${s}"`),
    );
    assert.deepEqual(problems, [], "dev dependencies (tsx, openai, typescript...) must not be imported by built code");
  });

  describe("the compose stack's config, run from a production-only install", { timeout: 120_000 }, () => {
    // What the image's `npm ci --omit=dev --omit=optional` installs, taken from
    // the lockfile and copied beside dist/ and package.json: nothing resolves
    // to a dev dependency, because there is none to find.
    let sandbox: string | undefined;
    const children: ChildProcess[] = [];

    function productionSandbox(): string {
      if (sandbox) return sandbox;
      sandbox = mkdtempSync(join(tmpdir(), "tollgate-prod-"));
      const lock = JSON.parse(read("package-lock.json")) as { packages: Record<string, { dev?: boolean; devOptional?: boolean; optional?: boolean }> };
      for (const [path, entry] of Object.entries(lock.packages)) {
        if (!path || entry.dev || entry.devOptional || entry.optional) continue;
        if (path.split("node_modules/").length !== 2) continue; // nested ones come with their parent
        mkdirSync(dirname(join(sandbox, path)), { recursive: true });
        cpSync(repoFile(path), join(sandbox, path), { recursive: true });
      }
      cpSync(repoFile("dist"), join(sandbox, "dist"), { recursive: true });
      cpSync(repoFile("package.json"), join(sandbox, "package.json"));
      return sandbox;
    }

    after(async () => {
      for (const child of children) {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGKILL");
          await once(child, "exit");
        }
      }
      if (sandbox) rmSync(sandbox, { recursive: true, force: true });
    });

    /** Spawns `node <args>` in the sandbox; resolves with the child and the first stdout line that matches. */
    async function startInSandbox(args: string[], env: Record<string, string>, ready: (line: string) => string | undefined): Promise<{ child: ChildProcess; value: string; output: () => string }> {
      const child = spawn(process.execPath, args, { cwd: productionSandbox(), env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
      children.push(child);
      let output = "";
      child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const value = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`node ${args.join(" ")} was not ready within 30 s\n${output}`)), 30_000);
        child.once("exit", (code) => (clearTimeout(timer), reject(new Error(`node ${args.join(" ")} exited ${code}\n${output}`))));
        createInterface({ input: child.stdout! }).on("line", (line) => {
          output += `${line}\n`;
          const found = ready(line);
          if (found !== undefined) (clearTimeout(timer), resolve(found));
        });
      });
      return { child, value, output: () => output };
    }

    function runInSandbox(args: string[], env: Record<string, string> = {}) {
      return spawnSync(process.execPath, args, { cwd: productionSandbox(), env: { ...process.env, ...env }, encoding: "utf8", timeout: 30_000 });
    }

    test("the CLI loads: every module it imports statically resolves", () => {
      // ESM links the whole static import graph before running anything.
      const version = runInSandbox(["dist/cli/main.js", "--version"]);
      assert.equal(version.status, 0, version.stderr);
      assert.equal(version.stdout.trim(), (JSON.parse(read("package.json")) as { version: string }).version);
    });

    test("with Redis and PostgreSQL: a key created with `keys create` calls the upstream through the gateway, counted in Redis", async (t) => {
      const redisUrl = await requireService(t, "redis");
      const postgresUrl = redisUrl && (await requireService(t, "postgres"));
      if (!redisUrl || !postgresUrl) return;
      const database = await scopedPostgres(postgresUrl, "deploy");
      const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
      t.after(async () => {
        redis.disconnect();
        await database.drop();
      });

      const upstream = await startInSandbox(["dist/demo/upstream.js", "--host", "127.0.0.1", "--port", "0"], {}, (line) => (line.startsWith("http") ? line : undefined));
      // The compose stack's config, its service URLs replaced by this machine's.
      const env = { ...tollgateEnvironment(), TOLLGATE_DATABASE_URL: database.url, TOLLGATE_REDIS_URL: redisUrl, TOLLGATE_UPSTREAM: upstream.value, NO_COLOR: "1" };
      const config = mountedConfig().host;

      const principal = `deploy-${process.pid}-${Date.now()}`;
      const created = runInSandbox(["dist/cli/main.js", "keys", "create", "--config", config, "--principal", principal, "--attr", "roles=user"], env);
      assert.equal(created.status, 0, created.stderr);
      const key = created.stdout.trim();
      assert.match(key, /^tg_/);

      const gateway = await startInSandbox(["dist/cli/main.js", "serve", "--config", config, "--host", "127.0.0.1", "--port", "0"], env, (line) => {
        if (!line.startsWith("{")) return undefined;
        const log = JSON.parse(line) as { msg?: string; url?: string };
        return log.msg === "listening" ? log.url : undefined;
      });
      // The key made before the first start counts: no admin key is minted.
      assert.doesNotMatch(gateway.output(), /created the first API key/);

      const refused = await fetch(`${gateway.value}/v1/models`);
      assert.equal(refused.status, 401);
      const res = await fetch(`${gateway.value}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "demo-small", messages: [{ role: "user", content: "hello from compose" }] }),
      });
      const body = (await res.json()) as { choices?: { message: { content: string } }[] };
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.choices?.[0]?.message.content, "You said: hello from compose");

      const keys = await database.admin.query(`SELECT principal FROM "${database.schema}".tollgate_api_keys`);
      assert.deepEqual(keys.rows.map((r: { principal: string }) => r.principal), [principal]);
      const counters = await redis.keys(`*${clientKey({ principal, attributes: {} }, undefined)}*`);
      assert.ok(counters.length > 0, "no quota counter in Redis for the caller");

      // The image's HEALTHCHECK command, run as Docker would, against this gateway and against nothing.
      const healthcheck = execForm(inRuntime("HEALTHCHECK")[0]!.args.replace(/^.*?\bCMD\s+/, ""))!;
      const healthy = runInSandbox(healthcheck.slice(1), { TOLLGATE_HEALTHCHECK_URL: `${gateway.value}/health` });
      assert.equal(healthy.status, 0, healthy.stderr);

      gateway.child.kill("SIGTERM");
      const [code] = (await once(gateway.child, "exit")) as [number | null];
      assert.equal(code, 0, "SIGTERM drains and exits 0, as `docker stop` expects");
      const unhealthy = runInSandbox(healthcheck.slice(1), { TOLLGATE_HEALTHCHECK_URL: `${gateway.value}/health` });
      assert.equal(unhealthy.status, 1);
    });
  });
});
