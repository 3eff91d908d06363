import { parse as parseYamlScalar } from "yaml";

/** A `${env.NAME}` that could not be substituted; `path` is where in the file it stands. */
export class EnvSubstitutionError extends Error {
  constructor(
    readonly path: readonly (string | number)[],
    message: string,
  ) {
    super(message);
  }
}

// ${env.NAME}, ${env.NAME:=default} (default when unset or empty), ${env.NAME:+alt} (alt when set and non-empty)
const REFERENCE = /\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?:(:=|:\+)([^}]*))?\}/g;

function substituteString(
  text: string,
  env: Readonly<Record<string, string | undefined>>,
  path: readonly (string | number)[],
): unknown {
  let whole = false;
  const out = text.replace(REFERENCE, (match, name: string, op: string | undefined, arg: string | undefined) => {
    whole = match === text;
    const value = env[name];
    if (op === ":=") return value ? value : (arg ?? "");
    if (op === ":+") return value ? (arg ?? "") : "";
    if (value === undefined) {
      throw new EnvSubstitutionError(path, `environment variable ${name} is not set (use \${env.${name}:=default} for a default)`);
    }
    return value;
  });
  if (!whole) return out;
  // As in Llama Stack: a value that is exactly one reference takes the type of
  // what it expands to (`port: ${env.PORT:=8321}` is a number), and an empty
  // expansion means "not set".
  if (out === "") return undefined;
  const scalar: unknown = parseYamlScalar(out);
  return typeof scalar === "number" || typeof scalar === "boolean" ? scalar : out;
}

/**
 * Replaces `${env.NAME}`, `${env.NAME:=default}` and `${env.NAME:+value}` in
 * every string of a parsed config tree, as Llama Stack does. A key whose value
 * expands to nothing is dropped, so the schema's default applies. Throws
 * {@link EnvSubstitutionError} naming the path when a variable without a
 * default is unset.
 */
export function substituteEnv(
  node: unknown,
  env: Readonly<Record<string, string | undefined>> = process.env,
  path: (string | number)[] = [],
): unknown {
  if (typeof node === "string") return substituteString(node, env, path);
  if (Array.isArray(node)) {
    return node.map((item, i) => substituteEnv(item, env, [...path, i])).filter((v) => v !== undefined);
  }
  if (node !== null && typeof node === "object") {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) {
      const substituted = substituteEnv(value, env, [...path, key]);
      if (substituted !== undefined) out[key] = substituted;
    }
    return out;
  }
  return node;
}
