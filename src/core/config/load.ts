import { readFileSync } from "node:fs";
import { isMap, isSeq, LineCounter, parseDocument, type Node } from "yaml";
import { z } from "zod";
import { ConfigError } from "../errors.js";
import { EnvSubstitutionError, substituteEnv } from "./env.js";
import { configSchema, type Config } from "./schema.js";

type Path = readonly PropertyKey[];

/** `server.auth.access_policy[0].permit` */
export function formatPath(path: Path): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out === "" ? "(top level)" : out;
}

function describeIssue(issue: z.core.$ZodIssue): { path: Path; message: string }[] {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => ({ path: [...issue.path, key], message: "unknown key" }));
  }
  if (issue.code === "invalid_type" && /received undefined/.test(issue.message)) {
    return [{ path: issue.path, message: "required" }];
  }
  let message = issue.message
    .replace(/^Invalid input: /, "")
    .replace(/^Invalid discriminator value\. Expected /, "expected one of ");
  if (issue.code === "invalid_value" && issue.values.length > 0) {
    message = `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
  }
  return [{ path: issue.path, message }];
}

/** Where a path points in the YAML source (the deepest node that exists), 1-based line. */
function lineOf(doc: ReturnType<typeof parseDocument>, counter: LineCounter, path: Path): number | undefined {
  let node: unknown = doc.contents;
  let found: Node | undefined = (node as Node | null) ?? undefined;
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key);
      if (!pair) break;
      found = (pair.key as Node) ?? found;
      node = pair.value;
      if (node && typeof node === "object" && "range" in node) found = pair.key as Node;
    } else if (isSeq(node) && typeof key === "number") {
      node = node.items[key];
      if (!node) break;
      found = node as Node;
    } else break;
  }
  const offset = found?.range?.[0];
  return offset === undefined ? undefined : counter.linePos(offset).line;
}

/**
 * Parses and validates a config text. `source` names it in errors (a file
 * path). Throws {@link ConfigError} whose `issues` each read
 * `<path in the file>: <what was expected> (line N)`.
 */
export function parseConfig(
  text: string,
  source = "config",
  env: Readonly<Record<string, string | undefined>> = process.env,
): Config {
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => `invalid YAML: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}${e.linePos ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : ""}`),
    );
  }
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError(source, ["(top level): expected a mapping of sections (server, upstream, storage, logging)"]);
  }
  const at = (path: Path) => {
    const line = lineOf(doc, counter, path);
    return line === undefined ? "" : ` (line ${line})`;
  };
  let substituted: unknown;
  try {
    substituted = substituteEnv(raw, env);
  } catch (err) {
    if (err instanceof EnvSubstitutionError) {
      throw new ConfigError(source, [`${formatPath(err.path)}: ${err.message}${at(err.path)}`]);
    }
    throw err;
  }
  return validate(substituted, source, at);
}

function validate(value: unknown, source: string, at: (path: Path) => string): Config {
  const result = configSchema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues
      .flatMap(describeIssue)
      .map(({ path, message }) => `${formatPath(path)}: ${message}${at(path)}`);
    throw new ConfigError(source, [...new Set(issues)]);
  }
  return deepFreeze(result.data);
}

/**
 * Validates a config given as an object (what a library user writes in code)
 * and fills in the defaults. No `${env.NAME}` substitution: code reads
 * `process.env` itself. A validated {@link Config} passes unchanged, so this
 * is safe to call on either. Throws {@link ConfigError} naming each path.
 *
 * @example validateConfig({ server: { auth: { provider_config: { type: "custom", endpoint: "http://127.0.0.1:9000/validate" } } } })
 */
export function validateConfig(value: unknown, source = "config"): Config {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(source, ["(top level): expected a mapping of sections (server, upstream, storage, logging)"]);
  }
  return validate(value, source, () => "");
}

/** Reads and validates a config file; see {@link parseConfig}. */
export function loadConfig(file: string, env: Readonly<Record<string, string | undefined>> = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  return parseConfig(text, file, env);
}

/**
 * The embedded default used when `tollgate serve` gets no config file:
 * Tollgate's own API keys in a SQLite file under `./data/`, forwarding to
 * `TOLLGATE_UPSTREAM` (default: Ollama on 127.0.0.1:11434).
 */
export function defaultConfig(env: Readonly<Record<string, string | undefined>> = process.env): Config {
  return parseConfig(
    [
      "server:",
      "  auth:",
      "    provider_config: {type: api_key}",
      "upstream:",
      "  url: ${env.TOLLGATE_UPSTREAM:=http://127.0.0.1:11434}",
      "storage: {type: sqlite, db_path: ./data/tollgate.db}",
    ].join("\n"),
    "embedded default config",
    env,
  );
}

/** The JSON Schema of the config file, generated from the zod schema. */
export function configJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
