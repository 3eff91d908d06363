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

/** A path in the config tree as one string, the key of {@link substituteEnv}'s `substituted` set. */
export function pathKey(path: readonly PropertyKey[]): string {
  return JSON.stringify(path.map((key) => (typeof key === "number" ? key : String(key))));
}

function substituteString(
  text: string,
  env: Readonly<Record<string, string | undefined>>,
  path: readonly (string | number)[],
  substituted: Set<string> | undefined,
): string | undefined {
  let whole = false;
  let replaced = false;
  const out = text.replace(REFERENCE, (match, name: string, op: string | undefined, arg: string | undefined) => {
    whole = match === text;
    replaced = true;
    const value = env[name];
    if (op === ":=") return value ? value : (arg ?? "");
    if (op === ":+") return value ? (arg ?? "") : "";
    if (value === undefined) {
      throw new EnvSubstitutionError(path, `environment variable ${name} is not set (use \${env.${name}:=default} for a default)`);
    }
    return value;
  });
  if (!replaced) return text;
  // As in Llama Stack, a value that is exactly one reference and expands to
  // nothing means "not set", so the schema's default applies.
  if (whole && out === "") return undefined;
  // The text stays text: never re-read as YAML, so a secret `0123` or `0x1F`
  // arrives exactly as the environment holds it. Number and boolean fields
  // accept it in `parseConfig`, which knows the field's type from the schema.
  substituted?.add(pathKey(path));
  return out;
}

/**
 * Replaces `${env.NAME}`, `${env.NAME:=default}` and `${env.NAME:+value}` in
 * every string of a parsed config tree, as Llama Stack does. Substituted
 * values are always strings (never re-read as YAML); their paths are added to
 * `substituted` so that the loader can let number and boolean fields accept
 * their text. A key whose value expands to nothing is dropped, so the
 * schema's default applies. Throws {@link EnvSubstitutionError} naming the
 * path when a variable without a default is unset.
 *
 * @example substituteEnv({ server: { port: "${env.PORT:=8321}" } }, {}) // { server: { port: "8321" } }
 */
export function substituteEnv(
  node: unknown,
  env: Readonly<Record<string, string | undefined>> = process.env,
  substituted?: Set<string>,
  path: (string | number)[] = [],
): unknown {
  if (typeof node === "string") return substituteString(node, env, path, substituted);
  if (Array.isArray(node)) {
    // Positions are those of the file, so a dropped item does not shift the
    // paths recorded for the ones after it: record after compaction.
    const items: unknown[] = [];
    for (const [i, item] of node.entries()) {
      const inner = new Set<string>();
      const value = substituteEnv(item, env, inner, [...path, i]);
      if (value === undefined) continue;
      const at = items.length;
      items.push(value);
      for (const key of inner) {
        const parts = JSON.parse(key) as (string | number)[];
        parts[path.length] = at;
        substituted?.add(pathKey(parts));
      }
    }
    return items;
  }
  if (node !== null && typeof node === "object") {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) {
      const result = substituteEnv(value, env, substituted, [...path, key]);
      if (result !== undefined) out[key] = result;
    }
    return out;
  }
  return node;
}
