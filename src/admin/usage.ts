import { InvalidParameterError, StoreUnavailableError } from "../core/errors.js";
import { USAGE_GROUPS, type RecordStore, type UsageGroup, type UsageRow } from "../core/stores/types.js";
import { onlyParams, timeParam } from "./input.js";

/** The default window: the last 24 hours. */
const DAY_MS = 24 * 3600 * 1000;
/** The longest window one query may span (a year of hourly rows per group is already a lot). */
const MAX_WINDOW_MS = 400 * DAY_MS;

/**
 * `GET /admin/v1/usage?group_by=principal,model&from=ISO&to=ISO[&principal=P]`:
 * `from` inclusive, `to` exclusive, both defaulting to the last 24 hours.
 */
export async function usageAnswer(store: RecordStore | undefined, query: URLSearchParams, now: number): Promise<{ object: "list"; data: readonly UsageRow[]; from: string; to: string; group_by: readonly UsageGroup[] }> {
  onlyParams(query, ["group_by", "from", "to", "principal"]);
  const groupBy = groupsOf(query.get("group_by"));
  const to = timeParam(query, "to") ?? now;
  const from = timeParam(query, "from") ?? to - DAY_MS;
  if (!(from < to)) throw new InvalidParameterError("from", "from must be before to");
  if (to - from > MAX_WINDOW_MS) throw new InvalidParameterError("from", "the window from..to may span at most 400 days");
  const principal = query.get("principal") ?? undefined;
  if (principal === "") throw new InvalidParameterError("principal", "principal must not be empty");
  if (!store) throw new StoreUnavailableError("No record store is configured for usage");
  const data = await store.usage({ groupBy, from: new Date(from), to: new Date(to), principal });
  return { object: "list", data, from: new Date(from).toISOString(), to: new Date(to).toISOString(), group_by: groupBy };
}

/** `principal,model` → its groups; default `principal`; each at most once. */
function groupsOf(text: string | null): UsageGroup[] {
  if (text === null || text === "") return ["principal"];
  const groups: UsageGroup[] = [];
  for (const word of text.split(",").map((w) => w.trim())) {
    if (!(USAGE_GROUPS as readonly string[]).includes(word)) throw new InvalidParameterError("group_by", `group_by takes a comma-separated list of: ${USAGE_GROUPS.join(", ")}`);
    if (!groups.includes(word as UsageGroup)) groups.push(word as UsageGroup);
  }
  return groups;
}
