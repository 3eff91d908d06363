import assert from "node:assert/strict";
import net from "node:net";
import { TollgateError } from "../../src/core/errors.js";

/** Awaits `promise`, which must reject with a {@link TollgateError}; resolves to that error. */
export async function refusal(promise: Promise<unknown>): Promise<TollgateError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof TollgateError, `expected a TollgateError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected a refusal");
}

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
