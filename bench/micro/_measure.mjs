// Shared by the micro-benchmarks: run a function for a fixed time and report
// operations per second, the median of several runs.
const QUICK = process.env.BENCH_QUICK === "1";
const RUN_MS = QUICK ? 100 : 500;
const RUNS = QUICK ? 3 : 7;

/** Times `fn` (sync or async); returns `{ name, opsPerSec }`. */
export async function measureAsync(name, fn) {
  for (let i = 0; i < 1000; i++) await fn();
  const results = [];
  for (let r = 0; r < RUNS; r++) {
    let ops = 0;
    const start = performance.now();
    while (performance.now() - start < RUN_MS) {
      for (let i = 0; i < 100; i++) await fn();
      ops += 100;
    }
    results.push((ops * 1000) / (performance.now() - start));
  }
  return { name, opsPerSec: results.sort((a, b) => a - b)[Math.floor(RUNS / 2)] };
}

/** Times a synchronous `fn`; returns `{ name, opsPerSec }`. */
export function measure(name, fn) {
  for (let i = 0; i < 10_000; i++) fn();
  const results = [];
  for (let r = 0; r < RUNS; r++) {
    let ops = 0;
    const start = performance.now();
    while (performance.now() - start < RUN_MS) {
      for (let i = 0; i < 1000; i++) fn();
      ops += 1000;
    }
    results.push((ops * 1000) / (performance.now() - start));
  }
  return { name, opsPerSec: results.sort((a, b) => a - b)[Math.floor(RUNS / 2)] };
}

/** A Markdown section: heading, then operations per second (and ratios to the first row when `ratios`). */
export function table(title, rows, { ratios = false } = {}) {
  const base = rows[0]?.opsPerSec ?? 1;
  const head = ratios ? "| operation | ops/s | ratio to first |\n| --- | ---: | ---: |" : "| operation | ops/s |\n| --- | ---: |";
  const lines = rows.map((r) =>
    ratios
      ? `| ${r.name} | ${Math.round(r.opsPerSec)} | ${(r.opsPerSec / base).toFixed(2)} |`
      : `| ${r.name} | ${Math.round(r.opsPerSec)} |`,
  );
  return [`### ${title}`, "", head, ...lines].join("\n");
}
