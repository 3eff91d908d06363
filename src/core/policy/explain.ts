import type { Decision } from "./compile.js";

/**
 * One line telling a human what decided: `ALLOWED by rule 2 (teammates read)`,
 * `DENIED: no rule matched (no match denies)`. Used by `tollgate policy check`.
 */
export function explainDecision(decision: Decision): string {
  const verdict = decision.allowed ? "ALLOWED" : "DENIED";
  const described = decision.description ? ` (${decision.description})` : "";
  switch (decision.source) {
    case "rule":
      return `${verdict} by access_policy[${decision.rule}]${described}`;
    case "default_policy":
      return `${verdict} by the default policy, rule ${decision.rule}${described} (access_policy is empty)`;
    case "no_user":
      return `${verdict}: no authenticated user (authentication is off)`;
    case "no_match":
      return `${verdict}: no rule matched (no match denies)`;
    case "no_policy":
      return `${verdict}: no policy configured`;
  }
}
