import { pino, type Logger as PinoLogger, type DestinationStream } from "pino";

export type Logger = PinoLogger;

/**
 * Paths pino censors in every log line. Nothing Tollgate logs should carry a
 * credential in the first place; this is the second line of defence, for
 * headers and bodies that reach a log by accident.
 */
export const REDACT_PATHS = [
  "authorization",
  "*.authorization",
  "headers.authorization",
  "req.headers.authorization",
  "req.headers.cookie",
  "req.headers['x-api-key']",
  "*['x-api-key']",
  "cookie",
  "*.cookie",
  "*['set-cookie']",
  "api_key",
  "*.api_key",
  "token",
  "*.token",
  "client_secret",
  "*.client_secret",
  "password",
  "*.password",
];

/** The root logger: JSON lines on `destination` (stdout by default), credentials redacted. */
export function createLogger(level = "info", destination?: DestinationStream): Logger {
  return pino(
    { level, base: { service: "tollgate", pid: process.pid }, redact: { paths: REDACT_PATHS, censor: "[redacted]" } },
    destination,
  );
}
