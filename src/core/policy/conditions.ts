import type { User } from "../user.js";

/**
 * The condition grammar of Llama Stack's access policy (`when` / `unless`),
 * parsed once at start-up into a {@link Condition} that is tested per request
 * without allocating.
 *
 *   user with <value> in <attr>        user with <value> not in <attr>
 *   user is owner                      user is not owner
 *   user in owners <attr>              user not in owners <attr>
 *   resource is unowned
 */

/** Who created a resource, as recorded at creation time. */
export interface Owner {
  readonly principal: string;
  readonly attributes: Readonly<Record<string, readonly string[]>>;
}

export type Condition =
  | { readonly kind: "user_with_value_in"; readonly value: string; readonly attr: string; readonly text: string }
  | { readonly kind: "user_with_value_not_in"; readonly value: string; readonly attr: string; readonly text: string }
  | { readonly kind: "user_is_owner"; readonly text: string }
  | { readonly kind: "user_is_not_owner"; readonly text: string }
  | { readonly kind: "user_in_owners"; readonly attr: string; readonly text: string }
  | { readonly kind: "user_not_in_owners"; readonly attr: string; readonly text: string }
  | { readonly kind: "resource_is_unowned"; readonly text: string }
  /** Internal (the default policy only): the user shares a value in every one of `attrs` the owner has, and the owner has at least one. */
  | { readonly kind: "user_shares_owner_attributes"; readonly attrs: readonly string[]; readonly text: string };

/** The condition forms, for error messages. */
export const CONDITION_FORMS = [
  "user with <value> in <attr>",
  "user with <value> not in <attr>",
  "user is owner",
  "user is not owner",
  "user in owners <attr>",
  "user not in owners <attr>",
  "resource is unowned",
] as const;

/**
 * Parses one condition; returns a string (the reason) when it is not one of
 * {@link CONDITION_FORMS}. Words are separated by any whitespace, as in the
 * reference's `str.split()`.
 *
 * @example parseCondition("user with admin in roles") // { kind: "user_with_value_in", value: "admin", attr: "roles", ... }
 */
export function parseCondition(text: string): Condition | string {
  const w = text.trim().split(/\s+/);
  const t = w.join(" ");
  if (w[0] === "user") {
    if (w.length === 3 && w[1] === "is" && w[2] === "owner") return { kind: "user_is_owner", text: t };
    if (w.length === 4 && w[1] === "is" && w[2] === "not" && w[3] === "owner") return { kind: "user_is_not_owner", text: t };
    if (w.length === 4 && w[1] === "in" && w[2] === "owners") return { kind: "user_in_owners", attr: w[3]!, text: t };
    if (w.length === 5 && w[1] === "not" && w[2] === "in" && w[3] === "owners") return { kind: "user_not_in_owners", attr: w[4]!, text: t };
    if (w.length === 5 && w[1] === "with" && w[3] === "in") return { kind: "user_with_value_in", value: w[2]!, attr: w[4]!, text: t };
    if (w.length === 6 && w[1] === "with" && w[3] === "not" && w[4] === "in") {
      return { kind: "user_with_value_not_in", value: w[2]!, attr: w[5]!, text: t };
    }
  } else if (w.length === 3 && w[0] === "resource" && w[1] === "is" && w[2] === "unowned") {
    return { kind: "resource_is_unowned", text: t };
  }
  return `unrecognised condition ${JSON.stringify(text)}; expected one of: ${CONDITION_FORMS.join(", ")}`;
}

function has(list: readonly string[] | undefined, value: string): boolean {
  return list !== undefined && Array.isArray(list) && list.includes(value);
}

/** True when the user holds at least one of the owner's values of `attr`; false when the owner has none. */
function sharesOwnerValue(user: User, owner: Owner | undefined, attr: string): boolean {
  const required = owner ? own(owner.attributes, attr) : undefined;
  // Deliberate change from the reference, which answers true when the owner
  // has no such attribute: there, a resource created by a user without
  // `teams` would be visible to everyone under `user in owners teams`.
  if (required === undefined || required.length === 0) return false;
  const values = own(user.attributes, attr);
  if (values === undefined) return false;
  for (let i = 0; i < required.length; i++) if (values.includes(required[i]!)) return true;
  return false;
}

/** An attribute's list, only if it is the object's own (never `toString` from a prototype). */
function own(attributes: Readonly<Record<string, readonly string[]>>, attr: string): readonly string[] | undefined {
  if (!Object.prototype.hasOwnProperty.call(attributes, attr)) return undefined;
  const v = attributes[attr];
  return Array.isArray(v) ? v : undefined;
}

/** Tests one parsed condition. `owner` undefined = the resource is unowned (or there is no resource: route rules). */
export function conditionHolds(c: Condition, user: User, owner: Owner | undefined): boolean {
  switch (c.kind) {
    case "user_with_value_in":
      return has(own(user.attributes, c.attr), c.value);
    case "user_with_value_not_in":
      // As the reference: a user without the attribute at all has the value "not in" it.
      return !has(own(user.attributes, c.attr), c.value);
    case "user_is_owner":
      return owner !== undefined && owner.principal === user.principal;
    case "user_is_not_owner":
      return owner === undefined || owner.principal !== user.principal;
    case "user_in_owners":
      return sharesOwnerValue(user, owner, c.attr);
    case "user_not_in_owners":
      return !sharesOwnerValue(user, owner, c.attr);
    case "resource_is_unowned":
      return owner === undefined;
    case "user_shares_owner_attributes": {
      if (owner === undefined) return false;
      let any = false;
      for (let i = 0; i < c.attrs.length; i++) {
        const attr = c.attrs[i]!;
        const required = own(owner.attributes, attr);
        if (required === undefined || required.length === 0) continue;
        any = true;
        if (!sharesOwnerValue(user, owner, attr)) return false;
      }
      return any;
    }
  }
}

/** True when every condition holds (an empty list holds). */
export function allHold(conditions: readonly Condition[], user: User, owner: Owner | undefined): boolean {
  for (let i = 0; i < conditions.length; i++) if (!conditionHolds(conditions[i]!, user, owner)) return false;
  return true;
}
