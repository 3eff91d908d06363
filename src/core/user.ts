/**
 * Who is calling: what every authentication provider produces.
 *
 * Attributes are string lists keyed by attribute name (`roles`, `teams`,
 * `projects`, `namespaces`, `scopes`, ...), as in Llama Stack.
 */
export interface User {
  readonly principal: string;
  readonly attributes: Readonly<Record<string, readonly string[]>>;
}

/** Builds a frozen {@link User}, dropping attribute entries that are not string lists. */
export function makeUser(principal: string, attributes: Record<string, unknown> = {}): User {
  // Null prototype: an attribute named `__proto__` (from a token's claims or an
  // auth service's answer) must stay data and never become the object's prototype.
  const clean: Record<string, readonly string[]> = Object.create(null) as Record<string, readonly string[]>;
  for (const [name, values] of Object.entries(attributes)) {
    if (Array.isArray(values) && values.every((v) => typeof v === "string")) {
      clean[name] = Object.freeze([...values]);
    }
  }
  return Object.freeze({ principal, attributes: Object.freeze(clean) });
}
