import type { KeyLimit } from "./stores/types.js";

/**
 * Who is calling: what every authentication provider produces.
 *
 * Attributes are string lists keyed by attribute name (`roles`, `teams`,
 * `projects`, `namespaces`, `scopes`, ...), as in Llama Stack.
 */
export interface User {
  readonly principal: string;
  readonly attributes: Readonly<Record<string, readonly string[]>>;
  /** Present when the credential was one of Tollgate's API keys: its id (usage per key) and its own limits. */
  readonly apiKey?: { readonly id: string; readonly limits?: readonly KeyLimit[] | undefined } | undefined;
}

/** Builds a frozen {@link User}, dropping attribute entries that are not string lists. */
export function makeUser(principal: string, attributes: Record<string, unknown> = {}): User {
  const clean: Record<string, readonly string[]> = {};
  for (const [name, values] of Object.entries(attributes)) {
    if (Array.isArray(values) && values.every((v) => typeof v === "string")) {
      // defineProperty, not assignment: an attribute named `__proto__` (from a
      // token's claims or an auth service's answer) stays data and never
      // becomes the object's prototype.
      Object.defineProperty(clean, name, { value: Object.freeze([...values]), enumerable: true });
    }
  }
  return Object.freeze({ principal, attributes: Object.freeze(clean) });
}
