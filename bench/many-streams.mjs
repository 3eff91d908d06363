// Many streams (issue 16), a section of `npm run bench`: thousands of SSE
// streams held open at once, the way chat clients hold them while a model
// writes. The demo upstream sends a token every `everyMs` for as many tokens
// as asked (x-demo-stream-tokens, x-demo-chunk-delay-ms) and stamps each
// event with the time it wrote it (x-demo-stamp); bench/open-loop.mjs opens
// the streams, their starts spread over `rampS` seconds, and measures each
// token's delay from that stamp to its arrival. One run per target, one
// after the other: the first target is the reference (direct to the
// upstream), the others' delay is given as added over it. The serving
// process tree's RSS is sampled during the run and its CPU time read before
// and after.
import { markdownTable, openFileLimit, runOpenLoop, sampleRss, treeCpu } from "./support.mjs";

const round2 = (x) => (x === null ? null : Math.round(x * 100) / 100);

/**
 * `targets`: `[{ id, name, url, headers, pid }]`, the reference first.
 * Resolves with `{ rows, lines, streams }`.
 */
export async function manyStreamsSection({ targets, counts, tokens, everyMs, rampS, bodyFile, path }) {
  const sections = [];
  for (const streams of counts) sections.push(await manyStreamsAt({ targets, streams, tokens, everyMs, rampS, bodyFile, path }));
  return { rows: sections.flatMap((s) => s.rows), lines: sections.flatMap((s) => s.lines), counts: sections.map((s) => s.streams) };
}

/** One count of streams, each target in turn: `{ rows, lines, streams }` (`streams`: the count run, cut to the open-file limit). */
async function manyStreamsAt({ targets, streams, tokens, everyMs, rampS, bodyFile, path }) {
  const notes = [];
  // Each stream holds a socket in the generator and, through a gateway, one
  // each way in the gateway: the gateway needs two descriptors per stream.
  const limit = openFileLimit();
  if (limit !== undefined && limit < 2 * streams + 256) {
    const fitted = Math.max(1, Math.floor((limit - 256) / 2));
    notes.push(`The open-file limit (ulimit -n ${limit}) holds ${fitted} streams through a gateway, not ${streams}: run with a higher \`ulimit -n\` for the full count.`);
    streams = fitted;
  }
  const seconds = (tokens * everyMs) / 1000;
  const rows = [];
  for (const t of targets) {
    const headers = { ...t.headers, "x-demo-stream-tokens": tokens, "x-demo-chunk-delay-ms": everyMs, "x-demo-stamp": 1 };
    const sampler = sampleRss(t.pid, 500);
    const cpuBefore = treeCpu(t.pid);
    const started = performance.now();
    let r;
    try {
      r = await runOpenLoop("streams", {
        url: t.url,
        path,
        "body-file": bodyFile,
        header: Object.entries(headers).map(([k, v]) => `${k}=${v}`),
        streams,
        ramp: rampS,
        // A busy machine stretches every 50 ms pause: streams three times their length still count.
        timeout: 3 * seconds + rampS + 60,
      });
    } finally {
      t.rss = sampler.stop();
    }
    const wall = (performance.now() - started) / 1000;
    const cpuAfter = treeCpu(t.pid);
    const row = {
      id: t.id,
      scenario: t.name,
      streams,
      error_samples: r.error_samples,
      peak_open: r.peak_open,
      completed: r.completed,
      failed: r.errors + r.non2xx,
      tokens: r.tokens,
      token_delay_p50_ms: round2(r.token_delay_ms.p50),
      token_delay_p99_ms: round2(r.token_delay_ms.p99),
      token_delay_p999_ms: round2(r.token_delay_ms.p999),
      first_byte_p99_ms: round2(r.first_byte_ms.p99),
      max_rss_mb: t.rss === undefined ? null : Math.round(t.rss / 1024 / 1024),
      cpu_percent: cpuBefore === undefined || cpuAfter === undefined ? null : Math.round((100 * (cpuAfter - cpuBefore)) / wall),
    };
    rows.push(row);
    console.error(`many streams ${t.id} ${t.name}: ${r.peak_open} open at once, ${r.completed} completed, token delay p99 ${row.token_delay_p99_ms} ms`);
  }
  const base = rows[0];
  for (const row of rows.slice(1)) {
    row.token_delay_p50_added_ms = round2(row.token_delay_p50_ms - base.token_delay_p50_ms);
    row.token_delay_p99_added_ms = round2(row.token_delay_p99_ms - base.token_delay_p99_ms);
  }
  const lines = [
    `### Many streams: ${streams}`,
    "",
    `${streams} SSE streams (\`stream: true\`), their starts spread over ${rampS} s, each a token every ${everyMs} ms for ${seconds} s (${tokens} tokens; the demo upstream's x-demo-stream-tokens, x-demo-chunk-delay-ms, x-demo-stamp), all open at once for ${Math.max(0, seconds - rampS)} s: ${Math.round((streams * 1000) / everyMs)} events/s for the upstream to write, a gateway to relay and the generator to read. Delay per token: from the upstream writing it to the client reading it. "added": over scenario ${base.id}. RSS: the serving process's tree (for scenario ${base.id}, the upstream); CPU: its share of one core over the run (wall ≈ ${Math.round(seconds + rampS)} s). The generator, the upstream and the gateway share the machine's cores.`,
    "",
    ...markdownTable(
      [["#", "l"], ["scenario", "l"], ["held at once", "r"], ["completed", "r"], ["failed", "r"], ["token delay p50 ms", "r"], ["p99 ms", "r"], ["p99.9 ms", "r"], ["p50 added", "r"], ["p99 added", "r"], ["first byte p99 ms", "r"], ["max RSS MB", "r"], ["CPU %", "r"]],
      rows.map((r) => [r.id, r.scenario, r.peak_open, r.completed, r.failed, r.token_delay_p50_ms, r.token_delay_p99_ms, r.token_delay_p999_ms, r.token_delay_p50_added_ms, r.token_delay_p99_added_ms, r.first_byte_p99_ms, r.max_rss_mb, r.cpu_percent]),
    ),
    "",
    ...rows.filter((r) => r.error_samples.length).map((r) => `Failures of ${r.id}, the first few: ${r.error_samples.join(", ")}.\n`),
    ...notes.map((n) => `${n}\n`),
  ];
  return { rows, lines, streams };
}
