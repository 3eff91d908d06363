import type { Command } from "commander";
import { checkConfigFiles } from "../core/config/files.js";
import { configJsonSchema, loadConfig } from "../core/config/load.js";

/** `tollgate config validate FILE` and `tollgate config schema`. */
export function registerConfigCommands(program: Command): void {
  const config = program.command("config").description("check a config file, or print the config's JSON Schema");
  config
    .command("validate")
    .description(
      "validate FILE and read every file it names (TLS certificate and key, CA files), as serve does; " +
        "exit 0 when valid, 1 with every problem (path in the file: what was expected) otherwise",
    )
    .argument("<file>", "the YAML config file")
    .action((file: string) => {
      checkConfigFiles(loadConfig(file), file);
      process.stdout.write(`${file}: valid\n`);
    });
  config
    .command("schema")
    .description("print the JSON Schema of the config file")
    .action(() => {
      process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
    });
}
