// Large prompts (issue 16), a section of `npm run bench`: chat requests with
// a 1 MB prompt, the closed-loop load of the main table. The gateway must
// read the whole body before it forwards (the model named in it is checked
// against the access policy) and forwards it whole; the bare proxy streams
// it through unread. Throughput against the bare proxy, and the RSS that
// bodies in flight cost.
import { BENCH_MODEL, markdownTable } from "./support.mjs";

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * A chat body of about `bytes` bytes: a long system message of ordinary
 * words (as a pasted document would be), then a short question, so that the
 * demo upstream's answer stays small.
 */
export function largeChatBody(bytes) {
  const words = "the quick brown fox jumps over a lazy dog while counting tokens ";
  const document = words.repeat(Math.ceil(bytes / words.length)).slice(0, bytes);
  return JSON.stringify({ model: BENCH_MODEL, messages: [{ role: "system", content: document }, { role: "user", content: "Say hello" }] });
}

/**
 * `targets`: `[{ id, name, url, headers, pid }]`; the ratio column compares
 * each with the target whose id is `baseId` (the bare proxy). `measure(run,
 * duration)` is the main table's load run (it keeps `run.rss` up to date).
 */
export async function largePromptsSection({ targets, baseId, bytes, measure, duration, warmup, rounds, connections }) {
  const body = largeChatBody(bytes);
  const runs = targets.map((t) => ({ ...t, kind: "json", body, results: [], rss: undefined }));
  if (warmup > 0) for (const r of runs) await measure(r, warmup);
  for (let round = 0; round < rounds; round++) {
    for (const r of round % 2 === 0 ? runs : [...runs].reverse()) {
      const result = await measure(r, duration);
      r.results.push(result);
      console.error(`round ${round + 1}/${rounds} large prompts ${r.id} ${r.name}: ${Math.round(result.rps)} req/s`);
    }
  }
  const rows = runs.map((r) => ({
    id: r.id,
    scenario: r.name,
    rps: Math.round(median(r.results.map((x) => x.rps)) * 10) / 10,
    p99_ms: Math.round(median(r.results.map((x) => x.p99)) * 100) / 100,
    // Failures are counted, not fatal: a 1 MiB body on a busy machine can outlast the load generator's timeout.
    failed: r.results.reduce((n, x) => n + x.non2xx + x.errors, 0),
    max_rss_mb: r.rss === undefined ? null : Math.round(r.rss / 1024 / 1024),
    cpu_percent: Math.round(100 * median(r.results.map((x) => x.cpu?.gateway ?? 0))),
  }));
  const base = rows.find((r) => r.id === baseId);
  // No ratio to a base that finished nothing (a busy machine, a load generator's timeout).
  for (const r of rows) r.ratio_to_base = base?.rps > 0 ? Math.round((100 * r.rps) / base.rps) / 100 : null;
  const lines = [
    "### Large prompts",
    "",
    `\`POST /v1/chat/completions\` with a ${Math.round(Buffer.byteLength(body) / 1024)} KiB body (a long system message, then "Say hello"), ${connections} connections, ${duration} s per run, median of ${rounds} round(s); ratio: to scenario ${baseId}. RSS: the serving process tree's largest; CPU: its share of one core.`,
    "",
    ...markdownTable(
      [["#", "l"], ["scenario", "l"], ["req/s", "r"], ["failed", "r"], ["MB/s in", "r"], ["p99 ms", "r"], [`ratio to ${baseId}`, "r"], ["max RSS MB", "r"], ["CPU %", "r"]],
      rows.map((r) => [r.id, r.scenario, r.rps, r.failed, Math.round((r.rps * Buffer.byteLength(body)) / 1e6), r.p99_ms, r.ratio_to_base?.toFixed(2), r.max_rss_mb, r.cpu_percent]),
    ),
    "",
  ];
  return { rows, lines };
}
