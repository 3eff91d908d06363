/**
 * The running config as `GET /admin/v1/config` shows it: every secret
 * replaced by `"***"`, whatever section holds it.
 */

/** What a secret is replaced by. */
export const REDACTED = "***";

/**
 * Field names whose value is a secret wherever they appear (`upstream.api_key`,
 * an introspection `client_secret`, a `password` of a store). Matched by
 * exact name, not by substring: `tokens` in a quota limit is a number, not a
 * secret.
 */
const SECRET_FIELDS = new Set(["api_key", "client_secret", "token", "password", "secret", "private_key"]);

/**
 * A deep copy of `value` with every secret field's value replaced by `"***"`
 * and the password of every URL in a string (`postgres://u:pw@h/db`,
 * `redis://:pw@h`) masked.
 *
 * @example redactConfig({ storage: { url: "postgres://u:pw@h/db" } }) // { storage: { url: "postgres://u:***@h/db" } }
 */
export function redactConfig(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactConfig);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [name, field] of Object.entries(value)) {
      // defineProperty: a config field named `__proto__` stays data.
      const shown = SECRET_FIELDS.has(name.toLowerCase()) && field !== undefined && field !== null && field !== "" ? REDACTED : redactConfig(field);
      Object.defineProperty(out, name, { value: shown, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  if (typeof value === "string") return maskUrlPassword(value);
  return value;
}

/**
 * `scheme://user:password@host...` with the password replaced by `***`
 * (also a user-less `redis://:pw@host`, and a password holding a raw `@`);
 * other strings unchanged. Done on the text rather than through `URL`,
 * which would also re-encode the rest.
 */
export function maskUrlPassword(text: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(text);
  if (!scheme) return text;
  const start = scheme[0].length;
  const end = text.slice(start).search(/[/?#]/);
  const authority = end === -1 ? text.slice(start) : text.slice(start, start + end);
  const at = authority.lastIndexOf("@");
  const colon = authority.indexOf(":");
  if (at === -1 || colon === -1 || colon > at) return text;
  return `${text.slice(0, start + colon + 1)}${REDACTED}${text.slice(start + at)}`;
}
