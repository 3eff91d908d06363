import type { Command } from "commander";
import { loadConfig } from "../core/config/load.js";
import { parseAttributes } from "../core/keys.js";
import { ACTIONS, compileAccessPolicy, type Action } from "../core/policy/compile.js";
import { evaluateAccess } from "../core/policy/evaluate.js";
import { explainDecision } from "../core/policy/explain.js";
import { makeUser } from "../core/user.js";

/** Exit code of `tollgate policy check` when the action is denied (0 when allowed, 1 on an error). */
export const DENIED_EXIT_CODE = 3;

interface CheckOptions {
  config: string;
  principal: string;
  attr?: string[];
  action: string;
  resource: string;
  owner?: string;
  ownerAttr?: string[];
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

/**
 * `tollgate policy check`: evaluates the config's `server.auth.access_policy`
 * for one principal, action and resource, exactly as the gateway would, and
 * prints ALLOWED or DENIED with the rule that decided.
 */
export function registerPolicyCommands(program: Command): void {
  const policy = program.command("policy").description("try the access policy of a config file");
  policy
    .command("check")
    .description(`print ALLOWED (exit 0) or DENIED (exit ${DENIED_EXIT_CODE}) and the rule that decided`)
    .requiredOption("-c, --config <file>", "the config file whose server.auth.access_policy is checked")
    .requiredOption("-p, --principal <name>", "the user")
    .option("-a, --attr <name=value>", "an attribute of the user, repeatable; `teams=a,b` is `teams=a` `teams=b`", collect)
    .requiredOption("--action <action>", `one of ${ACTIONS.join(", ")}`)
    .requiredOption("-r, --resource <type::id>", "the resource, e.g. model::llama-3 or file::file-abc")
    .option("--owner <name>", "the resource's owner (default: unowned)")
    .option("--owner-attr <name=value>", "an attribute of the owner at creation, repeatable", collect)
    .action((opts: CheckOptions) => {
      if (!(ACTIONS as readonly string[]).includes(opts.action)) {
        throw new Error(`--action must be one of ${ACTIONS.join(", ")}, got ${JSON.stringify(opts.action)}`);
      }
      if (!/^[^:]+::.+$/.test(opts.resource)) throw new Error(`--resource must be type::id, got ${JSON.stringify(opts.resource)}`);
      if (opts.ownerAttr && opts.owner === undefined) throw new Error("--owner-attr needs --owner");
      const config = loadConfig(opts.config);
      const compiled = compileAccessPolicy(config.server.auth?.access_policy ?? []);
      const user = makeUser(opts.principal, parseAttributes(opts.attr ?? []));
      const owner = opts.owner === undefined ? undefined : makeUser(opts.owner, parseAttributes(opts.ownerAttr ?? []));
      const decision = evaluateAccess(compiled, user, opts.action as Action, { key: opts.resource, owner });
      process.stdout.write(`${explainDecision(decision)}\n`);
      if (!decision.allowed) process.exitCode = DENIED_EXIT_CODE;
    });
}
