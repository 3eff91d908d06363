import type { PricingConfig } from "../config/schema.js";
import { NANOS_PER_UNIT } from "../quota/limits.js";

/** What a request cost, from `pricing`. */
export interface Pricing {
  /** `pricing.currency`. */
  readonly currency: string;
  /**
   * Cost in billionths of the currency of `promptTokens` and
   * `completionTokens` on `model`: its price, else `"*"`'s, else 0.
   * Prices are per million tokens, so a token at 0.60 costs 600 billionths.
   */
  costNanos(model: string | undefined, promptTokens: number, completionTokens: number): number;
}

/**
 * Compiles `pricing` once (a Map lookup per request).
 *
 * @example
 * const pricing = createPricing({ currency: "USD", models: { "llama-3.1-70b": { input: 0.6, output: 0.8 } } });
 * pricing.costNanos("llama-3.1-70b", 1000, 500); // 1_000_000 (0.001 USD)
 */
export function createPricing(config: PricingConfig): Pricing {
  // Per token in billionths: (price per million) * 1e9 / 1e6.
  const perToken = (p: { input: number; output: number }) => ({ input: (p.input * NANOS_PER_UNIT) / 1e6, output: (p.output * NANOS_PER_UNIT) / 1e6 });
  const prices = new Map(Object.entries(config.models).map(([model, p]) => [model, perToken(p)]));
  const fallback = prices.get("*");
  return {
    currency: config.currency,
    costNanos(model, promptTokens, completionTokens) {
      const p = (model === undefined ? undefined : prices.get(model)) ?? fallback;
      if (!p) return 0;
      return Math.round(promptTokens * p.input + completionTokens * p.output);
    },
  };
}
