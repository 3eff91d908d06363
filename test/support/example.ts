import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

/** A file of examples/ running as the docs say (`npx tsx examples/x.ts`). */
export interface RunningExample {
  /** From the example's `listening on http://...` line. */
  readonly url: string;
  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** What the example printed on stderr so far (for assertion messages). */
  stderr(): string;
  /** SIGKILL, if it still runs. */
  kill(): void;
}

/** Starts `examples/<name>` against the custom-auth endpoint `authUrl` on a free port. */
export async function startExample(name: string, authUrl: string): Promise<RunningExample> {
  const example = fileURLToPath(new URL(`../../examples/${name}`, import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", example], {
    env: { ...process.env, AUTH_ENDPOINT: authUrl, PORT: "0", TOLLGATE_CONFIG: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const match = /listening on (http:\/\/\S+)/.exec(out);
        if (match) resolve(match[1]!);
      });
      void exited.then((code) => reject(new Error(`examples/${name} exited with ${code}: ${stderr}`)));
    });
    return {
      url,
      stop() {
        child.kill("SIGTERM");
        return exited;
      },
      stderr: () => stderr,
      kill: () => void child.kill("SIGKILL"),
    };
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
}
