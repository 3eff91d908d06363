import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { Agent, request } from "undici";

/**
 * `tollgate serve` as a real process, for end-to-end tests: the built CLI
 * (`dist/cli/main.js`, so run `npm run build` first; `npm test` does) with a
 * config written to a temporary file, its stdout and stderr captured.
 */

/** The repository root. */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));

let checkedBuild = false;

/**
 * Path of a built file under dist/. The first call checks that dist/ exists
 * and is not older than src/, because a stale build makes end-to-end tests
 * test yesterday's code.
 */
export function distFile(path: string): string {
  if (!checkedBuild) {
    const stale: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const file = join(dir, entry.name);
        if (entry.isDirectory()) walk(file);
        else if (entry.name.endsWith(".ts")) {
          const built = join(REPO, "dist", relative(join(REPO, "src"), file)).replace(/\.ts$/, ".js");
          if (!existsSync(built) || statSync(built).mtimeMs + 1 < statSync(file).mtimeMs) stale.push(relative(REPO, file));
        }
      }
    };
    walk(join(REPO, "src"));
    if (stale.length > 0) {
      throw new Error(`dist/ is missing or older than ${stale.slice(0, 3).join(", ")}: run \`npm run build\` first`);
    }
    checkedBuild = true;
  }
  return join(REPO, "dist", path);
}

export interface StartGatewayOptions {
  /** The config, written as a file and passed with `--config` (JSON is YAML). Absent: no `--config`. */
  config?: Record<string, unknown> | string;
  /** More arguments after `serve` (the helper always adds `--port 0` unless `port` is given here). */
  args?: readonly string[];
  /** Environment added to this process's. */
  env?: Record<string, string | undefined>;
  /** Working directory; default a fresh temporary directory. */
  cwd?: string;
  /** How long to wait for readiness; default 30 s (start-up takes well under a second on an idle machine). */
  readyTimeoutMs?: number;
  /** For a gateway serving HTTPS: the CA (PEM) its certificate chains to, trusted by the readiness check. */
  ca?: string | Buffer;
}

export interface GatewayProcess {
  /** Base URL, from the `listening` log line. */
  readonly url: string;
  readonly child: ChildProcess;
  /** The temporary directory the config was written to (and the default cwd). */
  readonly dir: string;
  stdout(): string;
  stderr(): string;
  /** The JSON log lines printed on stdout so far. */
  logLines(): Record<string, unknown>[];
  /** Resolves with the first log line that matches, polling until `timeoutMs` (default 5 s), then rejects. */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Sends `signal` and resolves with the exit code (null when killed by a signal) once the process exited. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  /** Kills the process if it still runs and removes the temporary directory. */
  close(): Promise<void>;
}

/** Spawns `tollgate serve`, waits for its `listening` line and for `GET /health` to answer 200. */
export async function startGateway(options: StartGatewayOptions = {}): Promise<GatewayProcess> {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-gw-"));
  const args = [distFile("cli/main.js"), "serve"];
  if (options.config !== undefined) {
    const file = join(dir, "tollgate.yaml");
    writeFileSync(file, typeof options.config === "string" ? options.config : JSON.stringify(options.config, null, 2));
    args.push("--config", file);
  }
  const extra = options.args ?? [];
  if (!extra.includes("--port")) args.push("--port", "0");
  // TOLLGATE_TEST_WORKERS=N runs every gateway a test starts with `--workers N`
  // (unless the test passes its own `--workers`), so that the end-to-end suites
  // also check that N worker processes behave as one from outside:
  //   TOLLGATE_TEST_WORKERS=2 node --import tsx --test test/gateway/forwarding.test.ts
  const workers = process.env.TOLLGATE_TEST_WORKERS;
  if (workers && !extra.includes("--workers")) args.push("--workers", workers);
  args.push(...extra);

  const child = spawn(process.execPath, args, {
    cwd: options.cwd ?? dir,
    env: { ...process.env, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = once(child, "exit") as Promise<[number | null, NodeJS.Signals | null]>;

  const logLines = () =>
    stdout
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as Record<string, unknown>);

  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
    // With --workers, the workers of a killed supervisor would drain before exiting: kill them too
    // (those still running this gateway's command, so that a reused pid is never hit).
    for (const line of logLines()) {
      if (line.msg !== "worker started" || typeof line.worker_pid !== "number") continue;
      if (!readCmdline(line.worker_pid).includes(args.join("\0"))) continue;
      try {
        process.kill(line.worker_pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
  };

  const timeoutMs = options.readyTimeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let url: string | undefined;
  try {
    while (!url) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`tollgate serve exited (${child.exitCode ?? child.signalCode}) before listening\n${stderr}${stdout}`);
      }
      if (Date.now() > deadline) throw new Error(`tollgate serve did not listen within ${timeoutMs} ms\n${stderr}${stdout}`);
      const lines = logLines();
      const listening = lines.find((l) => l.msg === "listening");
      // With --workers, ready means every worker listens (and the first key is printed): the supervisor says when.
      const supervised = lines.some((l) => l.msg === "supervising workers");
      if (listening && (!supervised || lines.some((l) => l.msg === "workers ready"))) url = String(listening.url);
      else await new Promise((r) => setTimeout(r, 20));
    }
    const dispatcher = options.ca === undefined ? undefined : new Agent({ connect: { ca: options.ca } });
    for (;;) {
      const ok = await request(`${url}/health`, { dispatcher }).then(
        async (r) => (await r.body.dump(), r.statusCode === 200),
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`GET /health did not answer 200 within ${timeoutMs} ms\n${stderr}${stdout}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await dispatcher?.close();
  } catch (err) {
    await kill();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  return {
    url,
    child,
    dir,
    stdout: () => stdout,
    stderr: () => stderr,
    logLines,
    async waitForLog(match, waitMs = 5000) {
      const until = Date.now() + waitMs;
      for (;;) {
        const line = logLines().find(match);
        if (line) return line;
        if (Date.now() > until) throw new Error(`no matching log line within ${waitMs} ms\n${stdout}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async stop(signal = "SIGTERM", stopTimeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), stopTimeoutMs);
      const [code] = await exited;
      clearTimeout(timer);
      return code;
    },
    async close() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The command line of a running process, arguments NUL-separated; empty when it is gone (or there is no /proc). */
export function readCmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "";
  }
}

/** A response read off a raw socket. */
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Sends `request` (the exact bytes of an HTTP/1.1 request) on a new TCP
 * connection and parses the response; for what `fetch` refuses to send
 * (two Authorization headers, oversized headers, malformed requests).
 * Resolves when the server closes the connection or a complete response
 * with `Content-Length` has arrived.
 */
export function rawRequest(baseUrl: string, request: string | Buffer, timeoutMs = 5000): Promise<RawResponse> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) });
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      const text = Buffer.concat(chunks).toString("utf8");
      const split = text.indexOf("\r\n\r\n");
      if (split === -1) {
        if (!closed) return;
        done = true;
        clearTimeout(timer);
        reject(new Error(`no HTTP response (got ${JSON.stringify(text.slice(0, 200))})`));
        return;
      }
      const [statusLine = "", ...headerLines] = text.slice(0, split).split("\r\n");
      const headers: Record<string, string> = {};
      for (const line of headerLines) {
        const colon = line.indexOf(":");
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const body = text.slice(split + 4);
      const length = headers["content-length"];
      if (!closed && (length === undefined || Buffer.byteLength(body) < Number(length))) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ status: Number(statusLine.split(" ")[1]), headers, body });
    };
    const timer = setTimeout(() => {
      socket.destroy();
      if (!done) {
        done = true;
        reject(new Error("raw request timed out"));
      }
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      finish(false);
    });
    socket.on("close", () => finish(true));
    // The server may close while we are still writing (431): what it answered is what counts.
    socket.on("error", () => undefined);
    socket.write(request);
  });
}

/** Every line of `text` that contains `secret`; empty when it never appears. */
export function linesContaining(text: string, secret: string): string[] {
  return text.split("\n").filter((line) => line.includes(secret));
}
