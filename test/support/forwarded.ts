import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { DemoRequest } from "./upstream.js";

/**
 * Did a request reach the upstream? Each request a test sends carries a
 * unique tag in `X-Request-Id`, which the gateway keeps and passes upstream
 * (src/gateway/headers.ts), and the demo upstream records every request's
 * headers as they arrive. A refusal test then asks the real upstream process
 * whether it saw that tag.
 *
 * A header the gateway never forwards (the client's `Authorization`) would
 * make such a check pass whatever the gateway does: every file that uses
 * {@link assertNotForwarded} also proves once, with {@link assertForwarded},
 * that a tagged request which passes is found by its tag.
 */

/** The header carrying the tag. */
export const TAG_HEADER = "x-request-id";

/** What a refusal check needs of a recorded request. */
export type ForwardedRequest = Pick<DemoRequest, "method" | "path" | "headers">;

/** Something that can list what the upstream received (the demo upstream as a process, or a test's own server with {@link requestLog}). */
export interface RecordingUpstream {
  requests(): Promise<readonly ForwardedRequest[]>;
}

/**
 * The record of a test's own upstream (a server that must answer in a way
 * the demo upstream does not): call `record(req)` first thing in its handler.
 */
export function requestLog(): RecordingUpstream & { record(req: IncomingMessage): void } {
  const seen: ForwardedRequest[] = [];
  return {
    record: (req) => void seen.push({ method: req.method ?? "", path: (req.url ?? "").split("?")[0]!, headers: req.headers }),
    requests: () => Promise.resolve(seen),
  };
}

/** A fresh tag, and the headers that carry it: `fetch(url, { headers: { ...tagged.headers, ... } })`. */
export function newTag(): { tag: string; headers: Record<string, string>; line: string } {
  const tag = `t-${randomUUID()}`;
  return { tag, headers: { [TAG_HEADER]: tag }, line: `X-Request-Id: ${tag}` };
}

function carries(r: ForwardedRequest, tag: string): boolean {
  const value = r.headers[TAG_HEADER];
  return Array.isArray(value) ? value.includes(tag) : value === tag;
}

/**
 * How long a wrongly forwarded request gets to show up upstream after the
 * client had its answer. The upstream records a request when its headers
 * arrive, which is before the gateway could have answered from it; the
 * pause covers a gateway that answers the client and forwards anyway.
 */
const SETTLE_MS = 100;

/**
 * Fails when the upstream recorded any request carrying `tag` (or one of
 * `tags`: many refusals checked after one pause). Call it after the client
 * has its answer.
 */
export async function assertNotForwarded(upstream: RecordingUpstream, tags: string | readonly string[]): Promise<void> {
  const refused = new Set(typeof tags === "string" ? [tags] : tags);
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const reached = (await upstream.requests()).filter((r) => [...refused].some((tag) => carries(r, tag)));
  assert.deepEqual(
    reached.map((r) => `${r.method} ${r.path} (${TAG_HEADER}: ${String(r.headers[TAG_HEADER])})`),
    [],
    "a refused request reached the upstream",
  );
}

/** The requests carrying `tag` the upstream recorded; fails when there is none (polls up to `timeoutMs`). */
export async function assertForwarded(upstream: RecordingUpstream, tag: string, timeoutMs = 5000): Promise<ForwardedRequest[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reached = (await upstream.requests()).filter((r) => carries(r, tag));
    if (reached.length > 0) return reached;
    if (Date.now() > deadline) assert.fail(`no request with ${TAG_HEADER}: ${tag} reached the upstream`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
