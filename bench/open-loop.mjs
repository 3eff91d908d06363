#!/usr/bin/env node
// The benchmark's open-loop load generator, in its own process (bench/run.mjs
// starts it once per run). Two modes:
//
//   rate     requests at a constant arrival rate, whatever the server does:
//            request i is due at start + i / rate and its latency is counted
//            from that scheduled time, not from when it was sent, so a server
//            that falls behind shows its queue (no coordinated omission, as
//            wrk2 counts). The generator's own lateness (sent minus
//            scheduled) is reported beside, as its floor.
//   streams  `--streams N` SSE streams, their starts spread evenly over
//            `--ramp` seconds, all held open until the upstream ends them.
//            The demo upstream stamps each event with the time it wrote it
//            (`x-demo-stamp: 1`, the `demo_sent_at` field, ms on the wall
//            clock shared by the processes of one machine); the delay per
//            token is arrival minus that stamp.
//
// Connections come from one undici Pool with keep-alive (at most
// `--connections`; streams mode opens one per stream). Prints one JSON line
// on stdout: counts, errors, and the latencies (rate: one per request,
// microseconds; streams: percentiles of the delay per token), so that the
// caller can pool rounds.
//
//   node bench/open-loop.mjs rate --url URL --path P --body-file F [--header k=v]... --rate R --duration S [--warmup S] [--connections N]
//   node bench/open-loop.mjs streams --url URL --path P --body-file F [--header k=v]... --streams N [--ramp S] [--timeout S]
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Pool } from "undici";
import { percentile } from "./support.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: "string" },
    path: { type: "string", default: "/v1/chat/completions" },
    "body-file": { type: "string" },
    header: { type: "string", multiple: true, default: [] },
    rate: { type: "string", default: "1000" },
    duration: { type: "string", default: "5" },
    warmup: { type: "string", default: "0" },
    connections: { type: "string", default: "128" },
    streams: { type: "string", default: "100" },
    ramp: { type: "string", default: "2" },
    timeout: { type: "string", default: "120" },
  },
});
const mode = positionals[0];
const body = readFileSync(values["body-file"]);
const headers = { "content-type": "application/json" };
for (const h of values.header) {
  const at = h.indexOf("=");
  headers[h.slice(0, at).toLowerCase()] = h.slice(at + 1);
}

if (mode !== "rate" && mode !== "streams") throw new Error(`open-loop: mode "rate" or "streams", not ${mode}`);
const result = mode === "rate" ? await fixedRate() : await manyStreams();
// stdout is a pipe: exit only once the whole line has been handed over.
process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));

/** The rate mode: see the header. Latencies of requests due after the warm-up, in µs. */
async function fixedRate() {
  const rate = Number(values.rate);
  const warmup = Number(values.warmup);
  const duration = Number(values.duration);
  const pool = new Pool(values.url, { connections: Number(values.connections), keepAliveTimeout: 30_000, pipelining: 1 });
  const total = Math.round(rate * (warmup + duration));
  const measuredFrom = Math.round(rate * warmup);
  const interval = 1000 / rate;
  const latencies = new Float64Array(total - measuredFrom).fill(-1);
  const lateness = new Float64Array(total - measuredFrom);
  let errors = 0;
  let non2xx = 0;
  let outstanding = 0;
  let sent = 0;
  let finished;
  const allDone = new Promise((r) => (finished = r));
  const start = performance.now() + 20;

  function send(i, scheduled) {
    const measured = i >= measuredFrom;
    if (measured) lateness[i - measuredFrom] = performance.now() - scheduled;
    outstanding++;
    pool
      .request({ path: values.path, method: "POST", headers, body })
      .then(async (res) => {
        await res.body.dump();
        if (measured) {
          latencies[i - measuredFrom] = (performance.now() - scheduled) * 1000;
          if (res.statusCode < 200 || res.statusCode > 299) non2xx++;
        }
      })
      .catch(() => {
        if (measured) errors++;
      })
      .finally(() => {
        if (--outstanding === 0 && sent === total) finished();
      });
  }
  // Every request whose time has come is sent at once; the timer then sleeps
  // until the next is due (Node's timers wake within about a millisecond,
  // which the lateness figures show).
  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (sent < total && start + sent * interval <= now) {
        send(sent, start + sent * interval);
        sent++;
      }
      if (sent === total) return resolve();
      setTimeout(tick, Math.max(0, start + sent * interval - performance.now()));
    };
    setTimeout(tick, Math.max(0, start - performance.now()));
  });
  const drained = await Promise.race([allDone.then(() => true), new Promise((r) => setTimeout(() => r(false), Number(values.timeout) * 1000))]);
  // Requests still unanswered when the drain timed out count as errors.
  const unanswered = drained ? 0 : latencies.filter((x) => x < 0).length;
  const answered = Array.from(latencies.filter((x) => x >= 0), Math.round);
  const late = Array.from(lateness).sort((a, b) => a - b);
  await pool.destroy();
  return {
    mode: "rate",
    rate,
    duration,
    requests: latencies.length,
    errors: errors + unanswered,
    non2xx,
    latencies_us: answered,
    lateness_ms: { p50: percentile(late, 50), p99: percentile(late, 99), max: late.at(-1) ?? null },
  };
}

/** The streams mode: see the header. */
async function manyStreams() {
  const count = Number(values.streams);
  const rampMs = Number(values.ramp) * 1000;
  // A server whose accept queue is full drops the SYN and the client tries again 1, 3, 7 s later:
  // a slow connection is still a stream, so connecting may take up to a minute.
  const pool = new Pool(values.url, { connections: count, keepAliveTimeout: 30_000, pipelining: 1, bodyTimeout: 0, headersTimeout: 0, connect: { timeout: 60_000 } });
  let delays = new Float64Array(1 << 16);
  let tokens = 0;
  let open = 0;
  let peakOpen = 0;
  let completed = 0;
  let errors = 0;
  let non2xx = 0;
  const firstByteMs = [];
  /** The first few failures, said (a code or message each). */
  const errorSamples = [];
  const stampPattern = /"demo_sent_at":([0-9.]+)/g;
  const wallNow = () => performance.timeOrigin + performance.now();

  async function stream(scheduled) {
    const res = await pool.request({ path: values.path, method: "POST", headers, body });
    if (res.statusCode !== 200) {
      non2xx++;
      await res.body.dump();
      return;
    }
    firstByteMs.push(performance.now() - scheduled);
    open++;
    peakOpen = Math.max(peakOpen, open);
    let done = false;
    try {
      for await (const chunk of res.body) {
        const at = wallNow();
        const text = chunk.toString("latin1");
        stampPattern.lastIndex = 0;
        for (let m = stampPattern.exec(text); m; m = stampPattern.exec(text)) {
          if (tokens === delays.length) {
            const bigger = new Float64Array(delays.length * 2);
            bigger.set(delays);
            delays = bigger;
          }
          delays[tokens++] = at - Number(m[1]);
        }
        if (text.includes("data: [DONE]")) done = true;
      }
    } finally {
      open--;
    }
    if (done) completed++;
    else errors++;
  }

  const start = performance.now();
  const all = [];
  await new Promise((resolve) => {
    let started = 0;
    const tick = () => {
      const now = performance.now();
      while (started < count && start + (started * rampMs) / count <= now) {
        const scheduled = start + (started * rampMs) / count;
        all.push(
          stream(scheduled).catch((err) => {
            errors++;
            if (errorSamples.length < 3) errorSamples.push(String(err?.code ?? err?.message ?? err));
          }),
        );
        started++;
      }
      if (started === count) return resolve();
      setTimeout(tick, Math.max(0, start + (started * rampMs) / count - performance.now()));
    };
    tick();
  });
  const timedOut = await Promise.race([Promise.all(all).then(() => false), new Promise((r) => setTimeout(() => r(true), Number(values.timeout) * 1000))]);
  const sorted = delays.subarray(0, tokens).sort();
  const firstBytes = firstByteMs.sort((a, b) => a - b);
  await pool.destroy().catch(() => {});
  return {
    mode: "streams",
    streams: count,
    ramp_s: rampMs / 1000,
    peak_open: peakOpen,
    completed,
    errors: errors + (timedOut ? count - completed - errors - non2xx : 0),
    non2xx,
    error_samples: errorSamples,
    tokens,
    token_delay_ms: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9), max: sorted.at(-1) ?? null },
    first_byte_ms: { p50: percentile(firstBytes, 50), p99: percentile(firstBytes, 99) },
  };
}
