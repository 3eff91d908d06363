import type { Logger } from "./log.js";

/** Anything that holds a resource and lets it go with `close()`. */
export interface Closeable {
  close(): Promise<void>;
}

/**
 * A part (identity provider, quota store, upstream pool) that several
 * configuration generations may hold at once: the current one, and retired
 * ones still finishing their requests. A generation that carries a part over
 * from the previous one calls {@link hold}; each generation calls
 * {@link release} once when it ends, and the part is closed when the last
 * holder has let go of it, never while one still runs.
 */
export class SharedPart<T extends Closeable> {
  #holders = 1;

  /** Held once, by the generation that opened it. */
  constructor(readonly value: T) {}

  /** One more generation holds it; returns this part. */
  hold(): this {
    if (this.#holders === 0) throw new Error("a released part cannot be carried over");
    this.#holders++;
    return this;
  }

  /** One holder lets go; the last one closes it. */
  release(): Promise<void> {
    if (this.#holders === 0) return Promise.resolve();
    this.#holders--;
    return this.#holders === 0 ? this.value.close() : Promise.resolve();
  }
}

/** Releases each part in order, logging (never throwing) a failure to close. */
export async function releaseAll(parts: readonly (SharedPart<Closeable> | undefined)[], log: Logger): Promise<void> {
  for (const part of parts) {
    try {
      await part?.release();
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "error while closing");
    }
  }
}

/** Closes each resource in order, logging (never throwing) a failure. */
export async function closeAll(resources: readonly (Closeable | undefined)[], log: Logger): Promise<void> {
  for (const resource of resources) {
    try {
      await resource?.close();
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "error while closing");
    }
  }
}

/** Validated configs are plain JSON: equal text, equal meaning (so a part built from it can be carried over). */
export function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** An error's message for a log line: never its properties, which may hold request data. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
