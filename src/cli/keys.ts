import type { Command } from "commander";
// PLACEHOLDER: replaced by the API key work.
export function registerKeysCommands(_program: Command): void {}
