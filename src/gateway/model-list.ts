import { Readable } from "node:stream";
import { UpstreamError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { errorMessage } from "../core/carry-over.js";
import { discardBody, type UpstreamResponse } from "./forward.js";
import { parseJsonWithin } from "./json.js";
import type { Upstream } from "./upstreams.js";

/**
 * `GET /v1/models` with several upstreams: every upstream's list, fetched
 * at once, merged (each model once, the first upstream's entry kept, in
 * upstream order), held {@link MODEL_LIST_TTL_MS} so that a burst of list
 * calls asks each server once. The policy filters the merged list as it
 * filters one upstream's (resources.ts), and an alias is listed (as its
 * target's entry, under the alias's id) when its target is in what the
 * caller may read.
 */

/** How long a merged list is reused. */
export const MODEL_LIST_TTL_MS = 3_000;
/** How long one upstream may take to list its models before it is left out. */
const MODEL_LIST_TIMEOUT_MS = 5_000;
/** Largest list read from one upstream. */
const MAX_MODEL_LIST_BYTES = 4 * 1024 * 1024;

export interface ModelLists {
  /**
   * The merged list at `path` (`/v1/models`, Llama Stack's
   * `/v1/openai/v1/models`) as an upstream answer. An upstream that fails
   * or answers no list is left out (and logged); when every one does: 502.
   */
  fetch(path: string): Promise<UpstreamResponse>;
}

/** Is this a request for an OpenAI-style model list the gateway merges? */
export function isModelList(method: string, path: string): boolean {
  return method === "GET" && (path === "/v1/models" || path === "/v1/openai/v1/models");
}

/** The model a `GET /v1/models/{id}` names (and the path before it); undefined for any other path. */
export function modelInPath(path: string): { prefix: string; id: string } | undefined {
  for (const prefix of ["/v1/models/", "/v1/openai/v1/models/"]) {
    if (path.startsWith(prefix) && path.length > prefix.length) return { prefix, id: path.slice(prefix.length) };
  }
  return undefined;
}

export function createModelLists(upstreams: readonly Upstream[], log: Logger, now: () => number = Date.now): ModelLists {
  const cache = new Map<string, { until: number; merged: Promise<Buffer> }>();

  async function listOf(upstream: Upstream, path: string): Promise<Record<string, unknown>[]> {
    const headers = ["accept", "application/json", "accept-encoding", "identity"];
    if (upstream.config.api_key !== undefined) headers.push("authorization", `Bearer ${upstream.config.api_key}`);
    const answer = await upstream.forwarder.forward({ method: "GET", path, query: "", headers, body: null, signal: AbortSignal.timeout(MODEL_LIST_TIMEOUT_MS) });
    if (answer.status !== 200) {
      discardBody(answer.body);
      throw new Error(`answered ${answer.status}`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_MODEL_LIST_BYTES) {
        answer.body.destroy();
        throw new Error("list too large");
      }
      chunks.push(chunk);
    }
    const page = parseJsonWithin(Buffer.concat(chunks, size).toString("utf8")) as { data?: unknown } | undefined;
    if (!page || !Array.isArray(page.data)) throw new Error("not a list");
    return page.data.filter((item): item is Record<string, unknown> => typeof item === "object" && item !== null && typeof (item as { id?: unknown }).id === "string");
  }

  async function merge(path: string): Promise<Buffer> {
    const lists = await Promise.allSettled(upstreams.map((upstream) => listOf(upstream, path)));
    const seen = new Set<string>();
    const data: Record<string, unknown>[] = [];
    let answered = 0;
    lists.forEach((list, i) => {
      if (list.status === "rejected") {
        log.warn({ upstream: upstreams[i]!.name, err: errorMessage(list.reason) }, "model list: upstream left out");
        return;
      }
      answered++;
      for (const item of list.value) {
        if (seen.has(item.id as string)) continue;
        seen.add(item.id as string);
        data.push(item);
      }
    });
    if (answered === 0) throw new UpstreamError("No upstream answered its model list");
    return Buffer.from(JSON.stringify({ object: "list", data }));
  }

  return {
    async fetch(path) {
      const at = now();
      let hit = cache.get(path);
      if (!hit || hit.until <= at) {
        hit = { until: at + MODEL_LIST_TTL_MS, merged: merge(path) };
        cache.set(path, hit);
        // A failure is not reused: the next call asks again.
        hit.merged.catch(() => cache.delete(path));
      }
      const bytes = await hit.merged;
      return listAnswer(bytes);
    },
  };
}

/**
 * Adds each alias whose target is listed in `answer` (already filtered by
 * the policy): the target's entry under the alias's id, after the target.
 * Anything that is not a list passes unchanged.
 */
export async function withAliases(answer: UpstreamResponse, aliases: Readonly<Record<string, string>>): Promise<UpstreamResponse> {
  const chunks: Buffer[] = [];
  for await (const chunk of answer.body as AsyncIterable<Buffer>) chunks.push(chunk);
  const bytes = Buffer.concat(chunks);
  const page = parseJsonWithin(bytes.toString("utf8")) as { data?: unknown } | undefined;
  if (answer.status !== 200 || !page || !Array.isArray(page.data)) return { ...answer, body: Readable.from([bytes], { objectMode: false }) };
  const listed = new Set(page.data.map((item) => (item as { id?: unknown } | null)?.id));
  const data: unknown[] = [];
  for (const item of page.data) {
    data.push(item);
    const id = (item as { id?: unknown } | null)?.id;
    for (const [alias, target] of Object.entries(aliases)) {
      if (target === id && !listed.has(alias)) data.push({ ...(item as Record<string, unknown>), id: alias });
    }
  }
  return listAnswer(Buffer.from(JSON.stringify({ ...page, data })));
}

/** A list as an upstream's JSON answer. */
function listAnswer(bytes: Buffer): UpstreamResponse {
  return {
    status: 200,
    headers: { "content-type": "application/json", "content-length": String(bytes.length) },
    body: Readable.from([bytes], { objectMode: false }),
  };
}
