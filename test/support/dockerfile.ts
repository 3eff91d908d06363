import assert from "node:assert/strict";

/** A Dockerfile read as data, for the tests that hold deployment files to it (test/deploy/). */

export interface Instruction {
  /** Upper-case: FROM, RUN, COPY, ... */
  readonly name: string;
  /** The rest of the instruction, continuation lines joined. */
  readonly args: string;
}

export interface Stage {
  readonly image: string;
  readonly alias: string | undefined;
  readonly instructions: Instruction[];
}

/** The Dockerfile as stages of instructions: comments dropped, `\` continuations joined. */
export function parseDockerfile(text: string): Stage[] {
  const logical: string[] = [];
  let pending = "";
  for (const line of text.split("\n")) {
    if (/^\s*#/.test(line)) continue; // comments (and the syntax directive), also inside a continuation
    if (/\\\s*$/.test(line)) {
      pending += line.replace(/\\\s*$/, " ");
      continue;
    }
    const full = (pending + line).trim();
    pending = "";
    if (full) logical.push(full);
  }
  const stages: Stage[] = [];
  for (const line of logical) {
    const [, name = "", args = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    const upper = name.toUpperCase();
    if (upper === "FROM") {
      const [, image = "", alias] = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?/i.exec(args) ?? [];
      stages.push({ image, alias, instructions: [] });
    } else if (upper !== "ARG" || stages.length > 0) {
      const stage = stages.at(-1);
      assert.ok(stage, `${upper} before the first FROM`);
      stage.instructions.push({ name: upper, args });
    }
  }
  return stages;
}

/** The JSON array of an exec-form instruction (`["node", "-e", "..."]`), or undefined for shell form. */
export function execForm(args: string): string[] | undefined {
  const trimmed = args.trim();
  if (!trimmed.startsWith("[")) return undefined;
  return JSON.parse(trimmed) as string[];
}
