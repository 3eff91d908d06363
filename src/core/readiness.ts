import { errorMessage } from "./carry-over.js";

/**
 * Readiness checks (GET /ready): each dependency is asked whether it answers
 * now, bounded in time. A failure is told by a fixed reason word (`timeout`,
 * `unreachable`, `http_503`, ...) fit for an unauthenticated answer, never an
 * address or a driver's message; the detail is for the log only.
 */

/** What one check found: `failure` absent when it passed. */
export interface CheckResult {
  readonly name: "record_store" | "quota_store" | "identity_provider";
  readonly failure?: { readonly reason: string; readonly detail?: string | undefined } | undefined;
}

/** A check: resolves with `undefined` when it passed, else a reason; may reject. */
export type Check = () => Promise<string | undefined>;

/** Longest time one readiness check may take before it counts as failed. */
export const READY_CHECK_TIMEOUT_MS = 2_000;

/** A reason word fit for the unauthenticated /ready body: lower-case letters, digits, `_`. */
const READY_REASON = /^[a-z][a-z0-9_]{0,39}$/;

/** Transport error codes that all mean the same thing to an operator reading /ready. */
const UNREACHABLE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EPIPE"]);

/** Runs the named checks at once, each bounded by {@link READY_CHECK_TIMEOUT_MS}. */
export function runChecks(checks: readonly (readonly [CheckResult["name"], Check])[]): Promise<CheckResult[]> {
  return Promise.all(checks.map(async ([name, check]) => ({ name, failure: await bounded(check) })));
}

/**
 * Runs a readiness check: `undefined` when it passed, else a fixed reason
 * word and, for the log only, the detail (an error's code and first line,
 * which may name a host or a file).
 */
async function bounded(check: Check): Promise<{ reason: string; detail?: string } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<{ reason: string }>((resolve) => {
    timer = setTimeout(() => resolve({ reason: "timeout" }), READY_CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([
      check().then(
        (reason) => (reason === undefined ? undefined : READY_REASON.test(reason) ? { reason } : { reason: "failed", detail: reason.slice(0, 200) }),
        (err: unknown) => ({ reason: readinessReason(err), detail: errorMessage(err).split("\n")[0]!.slice(0, 200) }),
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A failed check's reason word: `unreachable` for transport errors, the error's own code when it is a plain word, else `error`. */
function readinessReason(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return "error";
  if (UNREACHABLE_CODES.has(code)) return "unreachable";
  if (code === "ETIMEDOUT") return "timeout";
  const word = code.toLowerCase();
  return READY_REASON.test(word) ? word : "error";
}
