// Fixed-rate latency (issue 16), a section of `npm run bench`: open-loop load
// at constant arrival rates (bench/open-loop.mjs, latency from the scheduled
// send time) against the direct upstream and the gateways, each rate in
// turn; the rounds alternate the targets' order and their latencies are
// pooled, so that p99.9 rests on every request of every round. The first
// target is the reference: each other's p50, p99 and p99.9 are given as
// added over it at the same rate.
import { markdownTable, percentile, runOpenLoop } from "./support.mjs";

const round2 = (x) => (x === null ? null : Math.round(x * 100) / 100);

/**
 * `targets`: `[{ id, name, url, headers }]`, the reference first; `bodyFile`
 * holds the request body. Resolves with `{ rows, lines }`: one row per
 * (target, rate) and the Markdown section.
 */
export async function fixedRateSection({ targets, rates, duration, warmup, rounds, bodyFile, path }) {
  const pooled = new Map(targets.flatMap((t) => rates.map((rate) => [`${t.id}@${rate}`, { latencies: [], errors: 0, non2xx: 0, lateP99: [] }])));
  for (let round = 0; round < rounds; round++) {
    for (const rate of rates) {
      for (const t of round % 2 === 0 ? targets : [...targets].reverse()) {
        const headers = Object.entries(t.headers).map(([k, v]) => `${k}=${v}`);
        const r = await runOpenLoop("rate", { url: t.url, path, "body-file": bodyFile, header: headers, rate, duration, warmup, timeout: 30 });
        const acc = pooled.get(`${t.id}@${rate}`);
        for (const x of r.latencies_us) acc.latencies.push(x);
        acc.errors += r.errors;
        acc.non2xx += r.non2xx;
        acc.lateP99.push(r.lateness_ms.p99);
        const sorted = [...r.latencies_us].sort((a, b) => a - b);
        console.error(`round ${round + 1}/${rounds} fixed rate ${rate}/s ${t.id} ${t.name}: p99 ${round2(percentile(sorted, 99) / 1000)} ms`);
      }
    }
  }
  const rows = [];
  for (const rate of rates) {
    for (const t of targets) {
      const acc = pooled.get(`${t.id}@${rate}`);
      const sorted = acc.latencies.sort((a, b) => a - b);
      const ms = (p) => round2(percentile(sorted, p) / 1000);
      rows.push({
        id: t.id,
        scenario: t.name,
        rate,
        requests: sorted.length,
        errors: acc.errors,
        non2xx: acc.non2xx,
        p50_ms: ms(50),
        p99_ms: ms(99),
        p999_ms: ms(99.9),
        generator_lateness_p99_ms: round2(Math.max(...acc.lateP99)),
      });
    }
  }
  const reference = targets[0];
  for (const row of rows) {
    const base = rows.find((r) => r.id === reference.id && r.rate === row.rate);
    for (const p of ["p50", "p99", "p999"]) row[`${p}_added_ms`] = row.id === reference.id ? null : round2(row[`${p}_ms`] - base[`${p}_ms`]);
  }
  const lines = [
    "### Fixed-rate latency (open loop)",
    "",
    `Requests sent at a constant rate whatever the server does (bench/open-loop.mjs: one process, an undici pool with keep-alive), each request's latency counted from the time it was due, so that a server falling behind shows its queue. ${duration} s per run after ${warmup} s at the same rate, ${rounds} round(s) alternating the order, the latencies of all rounds pooled. "added": over scenario ${reference.id} (${reference.name}) at the same rate. The generator, the upstream and the gateway share the machine's cores.`,
    "",
    ...markdownTable(
      [["rate /s", "r"], ["#", "l"], ["scenario", "l"], ["requests", "r"], ["errors", "r"], ["p50 ms", "r"], ["p99 ms", "r"], ["p99.9 ms", "r"], ["p50 added", "r"], ["p99 added", "r"], ["p99.9 added", "r"], ["generator late p99 ms", "r"]],
      rows.map((r) => [r.rate, r.id, r.scenario, r.requests, r.errors + r.non2xx, r.p50_ms, r.p99_ms, r.p999_ms, r.p50_added_ms, r.p99_added_ms, r.p999_added_ms, r.generator_lateness_p99_ms]),
    ),
    "",
    `The generator's own floor is scenario ${reference.id}'s row: its latency includes the generator's timer lateness (sends wake on Node timers, about a millisecond apart; "generator late p99" is sent minus due).`,
    "",
  ];
  const highest = {};
  for (const t of targets.slice(1)) {
    highest[t.id] = highestRateWithin(rows.filter((r) => r.id === t.id), 1);
    lines.push(`- ${t.id} ${t.name}: highest rate up to which p99 added stays ≤ 1 ms: ${highest[t.id] === null ? "none of those run" : `${highest[t.id]} /s`}`);
  }
  lines.push("");
  return { rows, lines, highest };
}

/** The highest rate such that at it and every lower rate run, p99 added ≤ `ms` without errors; null when the lowest already exceeds it. */
function highestRateWithin(rows, ms) {
  let highest = null;
  for (const r of [...rows].sort((a, b) => a.rate - b.rate)) {
    if (r.p99_added_ms === null || r.p99_added_ms > ms || r.errors + r.non2xx > 0) break;
    highest = r.rate;
  }
  return highest;
}
