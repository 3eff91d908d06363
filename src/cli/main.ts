#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { ConfigError } from "../core/errors.js";
import { registerConfigCommands } from "./config.js";
import { registerKeysCommands } from "./keys.js";
import { registerPolicyCommands } from "./policy.js";
import { registerServeCommand } from "./serve.js";
import { quietSqliteWarning } from "./runtime.js";
import { VERSION } from "../version.js";

/**
 * `tollgate`: every command exits 0 on success and non-zero with a one-line
 * reason on stderr on failure (config problems add one line per issue).
 */
export function buildProgram(): Command {
  const program = new Command("tollgate")
    .description("Authentication, access policy and quotas in front of AI APIs")
    .version(VERSION)
    .showHelpAfterError(false)
    .exitOverride();
  registerServeCommand(program);
  registerKeysCommands(program);
  registerConfigCommands(program);
  registerPolicyCommands(program);
  return program;
}

/** Prints an error as the one-line reason every command promises, and sets the exit code. */
export function reportFailure(err: unknown): void {
  if (err instanceof CommanderError) {
    if (err.exitCode !== 0) process.exitCode = err.exitCode || 2;
    return; // commander already printed its message
  }
  if (err instanceof ConfigError) {
    process.stderr.write(`tollgate: ${err.message}\n`);
  } else {
    process.stderr.write(`tollgate: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}\n`);
  }
  process.exitCode = 1;
}

quietSqliteWarning();
buildProgram()
  .parseAsync(process.argv)
  .catch(reportFailure);
