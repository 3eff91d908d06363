#!/usr/bin/env node
// What the usage meter adds to relaying an answer (issue 17), in one
// process: the bench's answers, as the demo upstream writes them, relayed
// by a bare `pipe()` (recording off) and through the meter (recording on),
// each answer handed over as undici hands it to the gateway (one piece per
// HTTP chunk: per event for a stream). The variants take turns in every
// round and the figure is the median over the rounds of each variant's
// time minus the pipe's in the same round: the host's drift moves both
// alike, where throughput runs of separate processes disagree by several
// per cent (see the section "What recording usage costs").
import { Readable, Writable } from "node:stream";
import { startDemoUpstream } from "../../dist/demo/upstream.js";
import { scanJson } from "../../dist/gateway/json.js";
import { meterUsageInto, prepareUsage } from "../../dist/gateway/usage.js";
import { BENCH_MODEL, markdownTable } from "../support.mjs";
import { measureAsync } from "./_measure.mjs";

const QUICK = process.env.BENCH_QUICK === "1";
const ROUNDS = QUICK ? 3 : 9;
const ROUND_MS = QUICK ? 100 : 400;

/** The answer's bytes as the upstream sends them, cut where its HTTP chunks end (an event stream: after each event). */
async function answer(url, body) {
  const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  const pieces = body.stream ? text.split(/(?<=\n\n)/) : [text];
  return { contentType: res.headers.get("content-type"), pieces: pieces.map((p) => Buffer.from(p, "utf8")) };
}

const upstream = await startDemoUpstream();
const messages = [{ role: "user", content: "Say hello" }];
const answers = {
  json: await answer(upstream.url, { model: BENCH_MODEL, messages }),
  stream: await answer(upstream.url, { model: BENCH_MODEL, messages, stream: true, stream_options: { include_usage: true } }),
};
await upstream.close();

/** Relays one answer (all its pieces pushed at once, as one socket read gives them) and resolves when the client's side has finished. */
function relayOnce(kind, how) {
  const { contentType, pieces } = answers[kind];
  return new Promise((resolve) => {
    const source = new Readable({ read() {} });
    const client = new Writable({ write: (_chunk, _encoding, done) => done() });
    client.on("finish", resolve);
    if (how === "pipe") source.pipe(client);
    else {
      meterUsageInto(source, client, {
        contentType,
        contentEncoding: undefined,
        // "strip": the gateway asked for the usage chunk and removes it; "keep": the client asked for it.
        stripUsageChunk: how === "strip",
        estimate: { promptTokens: 3, maxTokens: undefined },
        record: () => undefined,
      });
    }
    for (const piece of pieces) source.push(piece);
    source.push(null);
  });
}

/** µs per answer over about `ms`. */
async function time(kind, how, ms) {
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < ms) {
    for (let i = 0; i < 50; i++) await relayOnce(kind, how);
    n += 50;
  }
  return ((performance.now() - start) * 1000) / n;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const variants = [
  { kind: "json", how: "meter", label: "JSON answer, metered" },
  { kind: "stream", how: "keep", label: "stream, metered (the client asked for usage: the chunk is kept)" },
  { kind: "stream", how: "strip", label: "stream, metered (the gateway asked for usage: the chunk is removed)" },
];
for (const v of variants) await time(v.kind, v.how, ROUND_MS);
const piped = { json: [], stream: [] };
const added = variants.map(() => []);
for (let r = 0; r < ROUNDS; r++) {
  for (const kind of ["json", "stream"]) piped[kind].push(await time(kind, "pipe", ROUND_MS));
  for (const [i, v] of variants.entries()) added[i].push((await time(v.kind, v.how, ROUND_MS)) - piped[v.kind][r]);
}
// Before forwarding: the request read for its estimate and, for a stream, asked for usage (stream_options added).
const prepared = [];
for (const [label, body] of [
  ["JSON request", { model: BENCH_MODEL, messages }],
  ["streamed request (`stream_options` added)", { model: BENCH_MODEL, messages, stream: true }],
]) {
  const bytes = Buffer.from(JSON.stringify(body));
  const buffered = { parts: [bytes], length: bytes.length, json: scanJson(bytes), contentType: "application/json" };
  const { opsPerSec } = await measureAsync(label, () => prepareUsage({ method: "POST" }, "/v1/chat/completions", buffered, {}));
  prepared.push([label, (1e6 / opsPerSec).toFixed(2)]);
}
const events = answers.stream.pieces.length;
console.log(
  [
    "### The usage meter, per answer (in-process)",
    "",
    `The demo upstream's answers (a JSON answer; a stream of ${events} events, usage asked for) relayed to a stream that discards them, by \`pipe()\` and through the meter; median of ${ROUNDS} rounds in which each takes its turn.`,
    "",
    ...markdownTable(
      [["answer"], ["µs per answer, piped", "r"], ["µs added by the meter", "r"]],
      variants.map((v, i) => [v.label, median(piped[v.kind]).toFixed(2), median(added[i]).toFixed(2)]),
    ),
    "",
    "Before forwarding, a request the meter will read (`prepareUsage`: its estimate read, a stream asked for usage):",
    "",
    ...markdownTable([["request"], ["µs per request", "r"]], prepared),
  ].join("\n"),
);
