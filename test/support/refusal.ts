import assert from "node:assert/strict";
import net from "node:net";
import { TollgateError } from "../../src/core/errors.js";
import type { AuthProvider } from "../../src/core/providers/types.js";

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

/** What a provider made of a token: the user it authenticated, or the status and message it refused with. */
export type Outcome = { status: number; message: string } | { principal: string; attributes: Record<string, readonly string[]> };

/** Authenticates `token` for `GET /v1/models` and returns the {@link Outcome}, so tests compare one value. */
export async function outcomeOf(provider: AuthProvider, token: string): Promise<Outcome> {
  try {
    const user = await provider.authenticate({ token, path: "/v1/models", query: "", headers: {} });
    return { principal: user.principal, attributes: user.attributes };
  } catch (err) {
    const e = err as { status?: number; message: string };
    return { status: e.status ?? 0, message: e.message };
  }
}
