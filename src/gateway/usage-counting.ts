import type { User } from "../core/user.js";
import type { UsageRecorder } from "../core/usage/recorder.js";
import type { Pricing } from "../core/usage/pricing.js";
import type { TokenCount } from "./usage.js";


export interface ForwardedRequest {
  readonly recorder: UsageRecorder | undefined;
  readonly pricing: Pricing;
  /** The authenticated caller: usage is counted per principal (no user: nothing is counted). */
  readonly user: User | undefined;
  readonly model: string | undefined;
  /** The name of the upstream that answered (`default` with a single `upstream:`). */
  readonly upstream: string;
  /** Spend budgets of the caller (quota.ts), charged each answer's cost at once. */
  readonly recordSpend?: ((nanos: number) => Promise<void>) | undefined;
}

/**
 * Counts a forwarded request (its answer has started): one request now, and
 * returns what charges its tokens as the answer's `usage` is read: their
 * cost from `pricing` added to the usage rows and to the caller's spend
 * budgets (its promise: that charge stored). Undefined when nothing is
 * counted (no user, no recorder and no spend budget).
 */
export function countForwarded(request: ForwardedRequest): ((tokens: TokenCount) => Promise<void> | undefined) | undefined {
  const { recorder, pricing, user, model, upstream, recordSpend } = request;
  if (!user || (!recorder && !recordSpend)) return undefined;
  const { principal } = user;
  const keyId = user.apiKey?.id;
  recorder?.record({ principal, keyId, model, upstream, requests: 1, promptTokens: 0, completionTokens: 0, costNanos: 0 });
  return (tokens) => {
    const costNanos = pricing.costNanos(model, tokens.prompt, tokens.completion);
    recorder?.record({ principal, keyId, model, upstream, requests: 0, promptTokens: tokens.prompt, completionTokens: tokens.completion, costNanos });
    return recordSpend && costNanos > 0 ? recordSpend(costNanos) : undefined;
  };
}
