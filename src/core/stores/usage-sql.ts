import type { UsageDelta, UsageGroup, UsageQuery, UsageRow } from "./types.js";

/**
 * The usage table's SQL, shared by the SQLite and PostgreSQL stores: both
 * speak the same upsert and aggregates; only the placeholders differ
 * (`?` against `$1`).
 */

const DAY_MS = 86_400_000;

/** The expression each group field is computed from (a day is its hours rounded down to 00:00 UTC). */
const GROUP_EXPRESSIONS: Readonly<Record<UsageGroup, string>> = {
  principal: "principal",
  key: "key_id",
  model: "model",
  upstream: "upstream",
  day: `(hour - hour % ${DAY_MS})`,
  hour: "hour",
};

/** Columns in the order {@link usageRowValues} gives them. */
const USAGE_COLUMNS = "hour, principal, key_id, model, upstream, requests, prompt_tokens, completion_tokens, cost_nanos";

/** One upsert per row: added to whatever the row holds, so replicas' writes sum exactly. */
export function usageUpsert(placeholder: (n: number) => string): string {
  const values = Array.from({ length: 9 }, (_, i) => placeholder(i + 1)).join(", ");
  const add = (column: string) => `${column} = tollgate_usage.${column} + excluded.${column}`;
  return (
    `INSERT INTO tollgate_usage (${USAGE_COLUMNS}) VALUES (${values}) ` +
    "ON CONFLICT (hour, principal, key_id, model, upstream) DO UPDATE SET " +
    ["requests", "prompt_tokens", "completion_tokens", "cost_nanos"].map(add).join(", ")
  );
}

/**
 * Deltas for the same row summed into one, sorted by the row's key: one
 * statement per row, and two replicas writing the same rows lock them in the
 * same order (no deadlock).
 */
export function mergeUsage(deltas: readonly UsageDelta[]): UsageDelta[] {
  const rows = new Map<string, UsageDelta>();
  for (const d of deltas) {
    const id = JSON.stringify([d.hour, d.principal, d.keyId ?? "", d.model ?? "", d.upstream]);
    const held = rows.get(id);
    rows.set(
      id,
      held
        ? {
            ...held,
            requests: held.requests + d.requests,
            promptTokens: held.promptTokens + d.promptTokens,
            completionTokens: held.completionTokens + d.completionTokens,
            costNanos: held.costNanos + d.costNanos,
          }
        : d,
    );
  }
  return [...rows.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, d]) => d);
}

/** A delta's values in {@link usageUpsert}'s order (absent key and model stored as ''). */
export function usageRowValues(d: UsageDelta): (string | number)[] {
  return [d.hour, d.principal, d.keyId ?? "", d.model ?? "", d.upstream, d.requests, d.promptTokens, d.completionTokens, Math.round(d.costNanos)];
}

/** The grouped query for `query`, with its parameters. */
export function usageSelect(query: UsageQuery, placeholder: (n: number) => string): { text: string; values: (string | number)[] } {
  const groups = [...new Set(query.groupBy)];
  const values: (string | number)[] = [query.from.getTime(), query.to.getTime()];
  let where = `hour >= ${placeholder(1)} AND hour < ${placeholder(2)}`;
  if (query.principal !== undefined) {
    values.push(query.principal);
    where += ` AND principal = ${placeholder(3)}`;
  }
  const fields = groups.map((g, i) => `${GROUP_EXPRESSIONS[g]} AS g${i}`);
  const sums = [
    "COALESCE(SUM(requests), 0) AS requests",
    "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens",
    "COALESCE(SUM(completion_tokens), 0) AS completion_tokens",
    "COALESCE(SUM(cost_nanos), 0) AS cost_nanos",
  ];
  const grouped = groups.length === 0 ? "" : ` GROUP BY ${groups.map((g) => GROUP_EXPRESSIONS[g]).join(", ")} ORDER BY ${groups.map((_, i) => `g${i}`).join(", ")}`;
  return { text: `SELECT ${[...fields, ...sums].join(", ")} FROM tollgate_usage WHERE ${where}${grouped}`, values };
}

/** A result row of {@link usageSelect} as the admin API's usage row. */
export function usageRowFrom(groups: readonly UsageGroup[], row: Readonly<Record<string, unknown>>): UsageRow {
  const out: UsageRow = { requests: 0, prompt_tokens: 0, completion_tokens: 0, cost: 0 };
  [...new Set(groups)].forEach((group, i) => {
    const value = row[`g${i}`];
    switch (group) {
      case "principal":
      case "upstream":
        out[group] = String(value);
        break;
      case "key":
      case "model":
        out[group] = value === "" || value === null || value === undefined ? null : String(value);
        break;
      case "day":
        out.day = new Date(Number(value)).toISOString().slice(0, 10);
        break;
      case "hour":
        out.hour = new Date(Number(value)).toISOString();
        break;
    }
  });
  // PostgreSQL's SUM of BIGINT is NUMERIC, which pg returns as a string.
  out.requests = Number(row.requests);
  out.prompt_tokens = Number(row.prompt_tokens);
  out.completion_tokens = Number(row.completion_tokens);
  out.cost = Number(row.cost_nanos) / 1_000_000_000;
  return out;
}
