import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from "yaml";
import { z } from "zod";
import { ConfigError } from "../errors.js";
import { EnvSubstitutionError, pathKey, substituteEnv } from "./env.js";
import { resolveConfigPaths } from "./files.js";
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

/** Options of {@link parseConfig}. */
export interface ParseConfigOptions {
  /**
   * The folder relative file paths in the text resolve against (the config
   * file's folder); absent: they stay relative (to the working directory).
   */
  readonly folder?: string | undefined;
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
  options: ParseConfigOptions = {},
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
  const substitutedPaths = new Set<string>();
  try {
    substituted = substituteEnv(raw, env, substitutedPaths);
  } catch (err) {
    if (err instanceof EnvSubstitutionError) {
      throw new ConfigError(source, [`${formatPath(err.path)}: ${err.message}${at(err.path)}`]);
    }
    throw err;
  }
  return validate(substituted, source, at, substitutedPaths, options.folder);
}

/** Text a number field accepts from `${env.NAME}`: a decimal number, as Llama Stack's `int()`/`float()` read it. */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

/** The value a number or boolean field takes from substituted text, or undefined when the text is not one. */
function fromText(text: string, expected: string): number | boolean | undefined {
  const trimmed = text.trim();
  if (expected === "number") return DECIMAL.test(trimmed) ? Number(trimmed) : undefined;
  if (expected === "boolean") {
    const lower = trimmed.toLowerCase();
    return lower === "true" ? true : lower === "false" ? false : undefined;
  }
  return undefined;
}

/** Where the schema wanted a number or boolean: each type issue, also inside union branches. */
function typeExpectations(issue: z.core.$ZodIssue, base: Path = []): { path: Path; expected: string }[] {
  const path = [...base, ...issue.path];
  if (issue.code === "invalid_type") return [{ path, expected: String(issue.expected) }];
  if (issue.code === "invalid_union") return issue.errors.flatMap((branch) => branch.flatMap((inner) => typeExpectations(inner, path)));
  return [];
}

/**
 * Lets number and boolean fields accept the text `${env.NAME}` gave them
 * (`port: ${env.PORT:=8321}`), and only those: the schema says which fields
 * want a number, so a string field keeps the exact text. Rewrites `value` in
 * place; true when something changed (then the caller validates again).
 */
function acceptSubstitutedText(value: unknown, issues: readonly z.core.$ZodIssue[], substituted: ReadonlySet<string>): boolean {
  let changed = false;
  for (const { path, expected } of issues.flatMap((issue) => typeExpectations(issue))) {
    if (path.length === 0 || !substituted.has(pathKey(path))) continue;
    const parent = path.slice(0, -1).reduce<unknown>((node, key) => (node as Record<PropertyKey, unknown> | undefined)?.[key], value) as
      | Record<PropertyKey, unknown>
      | undefined;
    const key = path.at(-1)!;
    const text = parent?.[key];
    if (typeof text !== "string") continue;
    const typed = fromText(text, expected);
    if (typed === undefined) continue;
    parent![key] = typed;
    changed = true;
  }
  return changed;
}

function validate(
  value: unknown,
  source: string,
  at: (path: Path) => string,
  substituted: ReadonlySet<string> = new Set(),
  folder?: string,
): Config {
  let result = configSchema.safeParse(value);
  // Each round can only turn substituted text into a number or boolean, so
  // this ends; a few rounds cover fields checked only once their siblings pass.
  for (let round = 0; !result.success && round < 8 && acceptSubstitutedText(value, result.error.issues, substituted); round++) {
    result = configSchema.safeParse(value);
  }
  if (!result.success) {
    const issues = result.error.issues
      .flatMap(describeIssue)
      .map(({ path, message }) => `${formatPath(path)}: ${message}${at(path)}`);
    throw new ConfigError(source, [...new Set(issues)]);
  }
  return deepFreeze(folder === undefined ? result.data : resolveConfigPaths(result.data, folder));
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

/**
 * Reads and validates a config file; see {@link parseConfig}. Relative file
 * paths in it (`storage.db_path`, TLS and CA files) resolve against the
 * file's folder, whatever the working directory. A file that holds nothing
 * (empty, or only comments) is refused: serving the defaults would mean no
 * authentication, and an empty file is far more often a failed write or a
 * wrong mount than a wish.
 */
export function loadConfig(file: string, env: Readonly<Record<string, string | undefined>> = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  const doc = parseDocument(text);
  if (doc.errors.length === 0 && (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null))) {
    throw new ConfigError(file, ["(top level): the file is empty; write at least the sections you need (an empty file would serve without authentication)"]);
  }
  return parseConfig(text, file, env, { folder: dirname(resolve(file)) });
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
