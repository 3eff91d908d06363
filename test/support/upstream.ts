import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import type { DemoRequest } from "../../src/demo/upstream.js";
import { distFile } from "./gateway.js";

export type { DemoRequest };

/**
 * The demo upstream (src/demo/upstream.ts) as a real process, the way the
 * gateway meets an OpenAI-compatible server in production: over the network,
 * in another process. What it received is read back over HTTP
 * (`GET /_demo/requests`, or the `/echo/*` route).
 */
export interface UpstreamProcess {
  /** Base URL, `http://127.0.0.1:PORT`. */
  readonly url: string;
  /** Every request the upstream received so far, oldest first. */
  requests(): Promise<DemoRequest[]>;
  /** Polls {@link requests} until one matches; rejects after `timeoutMs`. */
  waitForRequest(match: (r: DemoRequest) => boolean, timeoutMs?: number): Promise<DemoRequest>;
  /** Stops the process (SIGTERM, then SIGKILL after 2 s). */
  close(): Promise<void>;
}

/** Starts `node dist/demo/upstream.js --port 0` and waits for it to print its URL. */
export async function startUpstreamProcess(args: readonly string[] = []): Promise<UpstreamProcess> {
  const child = spawn(process.execPath, [distFile("demo/upstream.js"), "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`demo upstream did not start within 10 s\n${stderr}`));
    }, 10_000);
    const lines = createInterface({ input: child.stdout! });
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`demo upstream exited with ${code} before listening\n${stderr}`));
    });
  });

  async function requests(): Promise<DemoRequest[]> {
    const res = await fetch(`${url}/_demo/requests`);
    return ((await res.json()) as { data: DemoRequest[] }).data;
  }

  return {
    url,
    requests,
    async waitForRequest(match, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = (await requests()).find(match);
        if (found) return found;
        if (Date.now() > deadline) throw new Error("the upstream did not see the expected request in time");
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    close: () => stopProcess(child),
  };
}

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`; resolves with the exit code. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM", graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}
