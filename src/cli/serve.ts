import type { Command } from "commander";
// PLACEHOLDER: replaced by the gateway work.
export function registerServeCommand(_program: Command): void {}
