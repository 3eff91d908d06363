import { Writable } from "node:stream";
import { createLogger, type Logger } from "../../src/core/log.js";

/**
 * A real Tollgate logger (same redaction, same JSON lines) whose output the
 * test can read, to check what was logged and that no secret ever was.
 */
export function captureLog(level = "trace"): { log: Logger; text(): string } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString("utf8"));
      done();
    },
  });
  return { log: createLogger(level, sink), text: () => lines.join("") };
}
