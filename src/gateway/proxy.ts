import type { IncomingMessage, ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import { errorMessage } from "../core/carry-over.js";
import { MethodNotAllowedError, UpstreamError, UpstreamTimeoutError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { RequestContext } from "../core/pipeline.js";
import { forwardedBody, hasBody, jsonMember, limitBody, readJsonBody, withBodyLength, type BufferedBody } from "./request-body.js";
import { discardBody, type UpstreamResponse } from "./forward.js";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "./headers.js";
import { maskedAnswer } from "./mask.js";
import { routeGroup, type GatewayMetrics } from "./metrics.js";
import type { OwnEndpoints } from "./own-endpoints.js";
import { sendJson, type GatewayRequestState, type ShutdownState } from "./requests.js";
import { isModelList, modelInPath, withAliases } from "./model-list.js";
import { pickUpstream, servedModel, upstreamReadiness, type Upstream } from "./upstreams.js";
import { drainSignal, isInference, meterUsage, meterUsageInto, prepareUsage, type MeterOptions, type UsagePlan } from "./usage.js";
import { countForwarded } from "./usage-counting.js";
import type { UsageRecorder } from "../core/usage/recorder.js";
import { traced, type UpstreamSpan } from "../core/tracing/trace.js";

/**
 * The proxy path: what happens to a request the pipeline (stages 1–5) let
 * through. The gateway's own endpoints and OPTIONS are answered here; any
 * other request goes, in this order:
 *
 *   guard      stage 6 before: the resource policy on what the catalog knows (resources.ts)
 *   usage plan stage 5's token budgets: a completion is asked to report its usage (usage.ts)
 *   forward    stage 7: to `upstream.url` with undici, the body streamed (forward.ts)
 *   guard after  stage 6 on the answer: a created resource's owner recorded, a list filtered
 *   relay      the answer sent on as it arrives, metered for its usage, counted (usage-counting.ts)
 */
export interface ProxyOptions {
  readonly own: OwnEndpoints;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  /** `http` or `https`: what `X-Forwarded-Proto` says. */
  readonly proto: "http" | "https";
  readonly shutdown: ShutdownState;
  /** Where forwarded requests are counted (usage per hour, principal, key, model, upstream); none without a record store. */
  readonly usage?: UsageRecorder | undefined;
}

export interface Proxy {
  /** Serves a request the pipeline let through (`state.context` set); rejects with the error to answer. */
  handle(raw: IncomingMessage, res: ServerResponse, state: GatewayRequestState): Promise<void>;
}

export function createProxy({ own, metrics, log, proto, shutdown, usage: recorder }: ProxyOptions): Proxy {
  return { handle };

  async function handle(raw: IncomingMessage, res: ServerResponse, state: GatewayRequestState): Promise<void> {
    const { generation } = state;
    const context = state.context!;
    const method = raw.method ?? "GET";

    const endpoint = own.which(context.path);
    if (method === "OPTIONS") {
      // Answered here, never forwarded: what this route accepts, from the catalog. (CORS is not Tollgate's.)
      res.writeHead(204, { ...context.responseHeaders, allow: own.allowed(generation.config, generation.catalog, endpoint, context.path) }).end();
      return;
    }
    if (endpoint) {
      if (method === "GET" || method === "HEAD") {
        const { router } = generation;
        const answer = await own.answer(endpoint, () => generation.core.ping(), router.single ? undefined : () => upstreamReadiness(router));
        if (typeof answer.body === "object") sendJson(res, answer.status, { ...context.responseHeaders }, answer.body);
        else {
          const headers = { ...context.responseHeaders, "content-type": answer.contentType ?? "text/plain; charset=utf-8", "content-length": String(Buffer.byteLength(answer.body)) };
          res.writeHead(answer.status, headers).end(answer.body);
        }
        return;
      }
      // Readiness and metrics are the gateway's own; they are never forwarded.
      if (endpoint === "ready" || endpoint === "metrics") throw new MethodNotAllowedError(method);
    }

    // The body limits of this request: its generation's, and its share of the buffer budget (requests.ts).
    const limits = state;
    const { router } = generation;
    // Stage 6 before forwarding; authentication off: nothing to check.
    const { guard } = generation;
    const { trace } = state;
    const guarded = context.user ? await (trace ? traced(trace.stage("resource_policy"), guard.before(raw, context, limits)) : guard.before(raw, context, limits)) : undefined;
    if (generation.models && isModelList(method, context.path)) {
      // Several upstreams: every one's list, merged; filtered by the policy as one upstream's would be; aliases of readable models added.
      const merged = await generation.models.fetch(context.path);
      const filtered = guarded ? await guard.after(guarded, context, merged, () => Promise.reject(new UpstreamError("A merged model list has no further pages"))) : merged;
      relay(res, state, undefined, Object.keys(router.aliases).length > 0 ? await withAliases(filtered, context.path, router.aliases) : filtered);
      return;
    }
    let body = guarded?.body;
    let model = guarded?.model;
    let path = guarded?.path ?? context.path;
    if (!router.single && model === undefined) {
      // Nothing checked the model (authentication off), but it still picks the upstream and an alias still applies.
      const named = method === "GET" && !guarded ? modelInPath(context.path) : undefined;
      if (named) {
        model = Object.hasOwn(router.aliases, named.id) ? router.aliases[named.id]! : named.id;
        path = `${named.prefix}${model}`;
      } else if (isInference(method, context.path)) {
        body ??= await readJsonBody(raw, limits);
        const inBody = jsonMember(body, "model");
        if (typeof inBody === "string") ({ body, model } = servedModel(body, ["model"], inBody, router.aliases));
      }
    }
    // Token and spend budgets (stage 5) and usage recording: a streamed completion is asked to report
    // usage (usage.ts); the answer must be readable, so it is asked for uncompressed.
    const metered = context.recordTokens || context.recordSpend || (recorder && context.user);
    const planned = metered && method === "POST" ? prepareUsage(raw, context.path, body, limits) : undefined;
    const usage = planned instanceof Promise ? await planned : planned;
    const sent: Sent = { body: usage?.body ?? body, inspectResponse: usage !== undefined || guarded?.inspectResponse === true, path };
    // Where it goes: the one upstream; the one a resource it names was created through; those serving its model (404 model_not_found when none).
    const sticky = guarded?.upstream === undefined ? undefined : router.named(guarded.upstream);
    const candidates = router.single ? undefined : sticky ? [sticky] : router.candidates(model ?? usage?.model);
    // Tracing: the model, when the gateway read it (a resource policy on it, routing by it, usage metering).
    const requested = model ?? usage?.model;
    if (trace && requested !== undefined) trace.set("gen_ai.request.model", requested);
    // Stage 7. An inference answer is read for its usage even after the client left (usage.ts): its upstream request outlives the client, within bounds.
    const asked = performance.now();
    // Only a budget needs it: usage recording alone counts the estimate of an answer the client left.
    const budgeted = context.recordTokens || context.recordSpend;
    const signal = usage?.estimate && budgeted ? drainSignal(state.signal) : state.signal;
    const routed = await (candidates ? forwardRouted(raw, context, state, candidates, sent, signal) : forwardTo(router.upstreams[0]!, raw, context, state, sent, false, signal)).catch(
      (err: unknown) => {
        if (state.clientLeft) return undefined;
        if (err instanceof UpstreamError || err instanceof UpstreamTimeoutError) {
          log.warn({ reqId: state.requestId, status: err.status, err: errorMessage(err.cause ?? err) }, "upstream request failed");
        }
        throw err;
      },
    );
    if (!routed) {
      // The client is gone; there is nobody to answer.
      res.destroy();
      return;
    }
    const [upstream, answer] = routed;
    state.upstreamMs = performance.now() - asked;
    metrics.upstream(routeGroup(context.path), state.upstreamMs / 1000);
    // Stage 6 after: the answer's resources (a created one's owner, a list's entries; more pages fetched bodiless, of the same upstream).
    const answered = guarded
      ? await guard.after(guarded, context, answer, (query) => forwardTo(upstream, raw, { ...context, query }, state, sent, true).then(([, page]) => page), upstream.name)
      : answer;
    relay(res, state, upstream, answered, usage);
    // The buffered body has been sent: its memory no longer counts, however long the answer streams.
    state.bodyHold.release();
  }

  /**
   * Sends the request to one of `candidates` (see upstreams.ts): the usable
   * one with the fewest requests in flight. A failure before the first
   * response byte (connect error, reset, timeout, 502/503/504) counts against
   * that upstream's health and is retried once on another candidate, when
   * the body can be sent again (none, or buffered; a body streamed from the
   * client is gone). The last failure is what the client gets: an error
   * (502/504), or the upstream's 502/503/504 answer. Resolves with the
   * upstream that answered; its requests in flight count until the answer's
   * body is closed.
   */
  async function forwardRouted(
    raw: IncomingMessage,
    context: RequestContext,
    state: GatewayRequestState,
    candidates: readonly Upstream[],
    sent: Sent,
    signal: AbortSignal,
  ): Promise<[Upstream, UpstreamResponse]> {
    const replayable = sent.body !== undefined || !hasBody(raw.headers);
    let upstream = pickUpstream(candidates)!;
    for (let attempt = 1; ; attempt++) {
      const retry = attempt === 1 && replayable ? pickUpstream(candidates, upstream) : undefined;
      upstream.inFlight++;
      let answer: UpstreamResponse;
      try {
        [, answer] = await forwardTo(upstream, raw, context, state, sent, false, signal);
      } catch (err) {
        upstream.inFlight--;
        if (!(err instanceof UpstreamError || err instanceof UpstreamTimeoutError) || signal.aborted) throw err;
        upstream.failed();
        if (!retry) throw err;
        log.warn({ reqId: state.requestId, upstream: upstream.name, next: retry.name, err: errorMessage(err.cause ?? err) }, "upstream failed before answering: retried on another");
        upstream = retry;
        continue;
      }
      const held = upstream;
      answer.body.once("close", () => held.inFlight--);
      if (!RETRIED_STATUSES.has(answer.status)) {
        upstream.succeeded();
        return [upstream, answer];
      }
      upstream.failed();
      if (!retry) return [upstream, answer];
      log.warn({ reqId: state.requestId, upstream: upstream.name, next: retry.name, status: answer.status }, "upstream answered with a failure: retried on another");
      discardBody(answer.body);
      upstream = retry;
    }
  }

  /**
   * Sends the upstream's response on: the status
   * and headers leave as soon as they arrive (a client sees a stream start
   * before its first token), then every body chunk as it comes. If either
   * side fails mid-way, both are destroyed: the client's connection is
   * cut (its headers are gone, a status can no longer tell it) and the
   * upstream request is aborted.
   */
  /** `target`: the upstream that answered; none for an answer of the gateway's making from several (a merged model list). */
  function relay(res: ServerResponse, state: GatewayRequestState, target: Upstream | undefined, upstream: UpstreamResponse, usage?: UsagePlan): void {
    let headers = downstreamResponseHeaders(upstream.headers);
    let source = upstream.body;
    // An error answer may repeat the credential the gateway sent (mask.ts): never relay it.
    const apiKey = target?.config.api_key;
    if (apiKey && upstream.status >= 400) {
      const masked = maskedAnswer(headers, upstream.body, apiKey);
      if (!masked) {
        discardBody(upstream.body);
        metrics.upstreamError("invalid");
        throw new UpstreamError();
      }
      ({ headers, body: source } = masked);
    }
    if (shutdown.closing) headers.connection = "close";
    // Ours replace any RateLimit fields of the upstream's: the client's limits are the gateway's.
    const quotaHeaders = state.context?.responseHeaders;
    if (quotaHeaders) Object.assign(headers, quotaHeaders);
    headers["x-request-id"] = state.requestId;
    try {
      // One call: the status and every header are validated and stored together (sent with the first chunk).
      res.writeHead(upstream.status, headers);
    } catch {
      // A header value Node will not send: the upstream's answer is unusable.
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      res.setHeader("x-request-id", state.requestId);
      if (source !== upstream.body) discardBody(source);
      discardBody(upstream.body);
      metrics.upstreamError("invalid");
      throw new UpstreamError();
    }
    if (headers["content-length"] === undefined) res.flushHeaders();
    // pipe() plus two listeners rather than stream.pipeline, which allocates an
    // AbortController and an AbortError per call: measurable at this rate.
    const recordTokens = state.context?.recordTokens;
    // Forwarded: counted in usage (refusals never get here), its tokens and cost as they are read.
    const countTokens = countForwarded({
      recorder,
      pricing: state.generation.core.pricing,
      user: state.context?.user,
      model: usage?.model,
      upstream: target?.name ?? MERGED_UPSTREAM_NAME,
      recordSpend: state.context?.recordSpend,
    });
    const metering: MeterOptions | undefined =
      usage && (recordTokens || countTokens) && upstream.status >= 200 && upstream.status < 300
        ? {
            contentType: headerText(headers["content-type"]),
            // Two Content-Encoding fields name two codings: "gzip, br", which the meter does not read (the estimate is charged).
            contentEncoding: headerList(headers["content-encoding"]),
            // A body of declared length cannot lose a chunk; SSE never declares one in practice.
            stripUsageChunk: usage.stripUsageChunk && headers["content-length"] === undefined,
            estimate: usage.estimate,
            record: (tokens) => {
              metrics.tokens(tokens.total);
              const budgeted = recordTokens?.(tokens.total);
              const spent = countTokens?.(tokens);
              return budgeted && spent ? Promise.all([budgeted, spent]) : (budgeted ?? spent);
            },
            // A budget: read on after the client left; the client has its answer once its charge is stored (a next request, on any worker or replica, sees it).
            budgeted: recordTokens !== undefined || state.context?.recordSpend !== undefined,
          }
        : undefined;
    if (metering && !state.clientLeft) {
      // Metered: the meter writes the client's bytes to the response itself (no stream in between).
      meterUsageInto(source, res, metering);
      return;
    }
    const body = metering ? meterUsage(source, metering) : source;
    body.on("error", () => res.destroy());
    if (state.clientLeft) {
      // The client left while the upstream answered: a metered answer is still read for its usage.
      body.destroy();
      return;
    }
    res.once("close", () => {
      if (!body.readableEnded) body.destroy();
    });
    body.pipe(res);
  }

  /**
   * Sends the request to `upstream` with its credential and principal
   * header. `sent`: what stages 5 and 6 read (a buffered body is forwarded
   * instead of the stream; an answer the gateway must inspect is asked for
   * uncompressed). `bodyless`: a follow-up GET for the next page of a filtered list.
   */
  async function forwardTo(
    upstream: Upstream,
    raw: IncomingMessage,
    context: RequestContext,
    state: GatewayRequestState,
    sent: Sent,
    bodyless = false,
    signal = state.signal,
  ): Promise<[Upstream, UpstreamResponse]> {
    const { config } = upstream;
    let headers = upstreamRequestHeaders(raw.rawHeaders, {
      apiKey: config.api_key,
      principalHeader: config.principal_header,
      principal: context.user?.principal,
      requestId: state.requestId,
      forwarded: { remoteAddress: raw.socket.remoteAddress, proto, host: raw.headers.host },
    });
    if (sent.inspectResponse) headers = identityEncoding(headers);
    const buffered: BufferedBody | undefined = bodyless ? undefined : sent.body;
    if (buffered) headers = withBodyLength(headers, buffered.length);
    // Tracing: the upstream request is a child span of this one, and its traceparent says so.
    const span = state.trace?.upstream(raw.method ?? "GET", config.url);
    if (span) {
      span.set("tollgate.upstream", upstream.name);
      headers = span.propagate(headers);
    }
    const forwarded = upstream.forwarder.forward({
      method: raw.method ?? "GET",
      path: bodyless ? context.path : sent.path,
      query: context.query,
      headers,
      body: bodyless ? null : buffered ? forwardedBody(buffered) : hasBody(raw.headers) ? limitBody(raw, state) : null,
      signal,
    });
    const answer = await (span ? tracedAnswer(span, forwarded) : forwarded);
    return [upstream, answer];
  }
}

/** What is sent upstream besides the client's request line and headers. */
interface Sent {
  /** The buffered body to send instead of the client's stream (read by stage 5 or 6, perhaps rewritten). */
  readonly body: BufferedBody | undefined;
  /** The answer must be read (a list filtered, an id recorded, usage metered): asked for uncompressed. */
  readonly inspectResponse: boolean;
  /** The path to send (the client's, or a model alias's target). */
  readonly path: string;
}

/** The upstream a merged model list is counted under in usage rows: it came from every one. */
const MERGED_UPSTREAM_NAME = "*";

/** Answers that count as an upstream's failure before its first byte: retried once on another upstream. */
const RETRIED_STATUSES: ReadonlySet<number> = new Set([502, 503, 504]);

/** The upstream span ends when the answer's body has been read (or cut), or with the error that failed the request. */
function tracedAnswer(span: UpstreamSpan, answer: Promise<UpstreamResponse>): Promise<UpstreamResponse> {
  return answer.then(
    (upstream) => {
      span.set("http.response.status_code", upstream.status);
      upstream.body.once("close", () => span.end(upstream.status >= 400 ? { code: String(upstream.status) } : undefined));
      return upstream;
    },
    (err: unknown) => {
      span.end(err);
      throw err;
    },
  );
}

/** Request headers asking for an uncompressed answer: the gateway must read it (resources.ts). */
function identityEncoding(headers: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== "accept-encoding") out.push(headers[i]!, headers[i + 1]!);
  }
  out.push("accept-encoding", "identity");
  return out;
}

/** A header's fields joined as one list ("gzip, br"); undefined when absent. */
function headerList(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(", ") : value;
}

function headerText(value: string | string[] | number | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value === undefined ? undefined : String(value);
}
