import { OverloadedError } from "../core/errors.js";

/**
 * The bound on request bytes the gateway holds in memory across every
 * request in flight (`server.max_buffered_bytes`). Most bodies stream
 * through untouched; those the gateway must read whole (an inference body,
 * for its `model` and usage options) are held until their request ends.
 * Without a bound, a few concurrent large bodies take the process past its
 * memory limit (four 95 MB chat requests took 1.2 GB): past the bound a
 * request is refused with 503 `overloaded` instead, and the ones already
 * admitted finish.
 */
export interface BufferBudget {
  /** Bytes held now. */
  readonly held: number;
  /** A holder for one request: what it takes is given back by `release()`, once. */
  forRequest(): BufferHold;
}

export interface BufferHold {
  /** Takes `bytes` more; throws {@link OverloadedError} (and takes nothing) when that would pass the bound. */
  reserve(bytes: number): void;
  /** Gives back everything this request took. Idempotent. */
  release(): void;
}

/**
 * @param limit the bound, in bytes (read at each reservation: a reload may change it)
 * @param onRefused called once per refused reservation (the metric)
 * @example const budget = createBufferBudget(() => 256 * 1024 * 1024, () => metrics.overloaded());
 */
export function createBufferBudget(limit: () => number, onRefused: () => void = () => undefined): BufferBudget {
  let held = 0;
  return {
    get held() {
      return held;
    },
    forRequest() {
      let mine = 0;
      return {
        reserve(bytes) {
          if (held + bytes > limit()) {
            onRefused();
            throw new OverloadedError();
          }
          held += bytes;
          mine += bytes;
        },
        release() {
          held -= mine;
          mine = 0;
        },
      };
    },
  };
}
