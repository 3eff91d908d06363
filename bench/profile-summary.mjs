#!/usr/bin/env node
// Where a V8 CPU profile (`node --cpu-prof`, or BENCH_CPU_PROF=<dir> npm run bench)
// spent its samples: the top functions by self time, and self time by file.
// Usage: node bench/profile-summary.mjs FILE.cpuprofile [N (default 30)]
import { readFileSync } from "node:fs";

const [file, top = "30"] = process.argv.slice(2);
const profile = JSON.parse(readFileSync(file, "utf8"));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
for (const id of profile.samples) self.set(id, (self.get(id) ?? 0) + 1);
// Percentages are of the samples where the process was busy: a gateway idles while the other scenarios run.
const idle = new Set(profile.nodes.filter((n) => n.callFrame.functionName === "(idle)").map((n) => n.id));
const total = profile.samples.filter((id) => !idle.has(id)).length;
const fns = new Map();
const files = new Map();
for (const [id, count] of self) {
  if (idle.has(id)) continue;
  const { functionName, url, lineNumber } = byId.get(id).callFrame;
  const where = url.replace(/^file:\/\//, "").replace(/^.*\/node_modules\//, "~/").replace(/^.*\/dist\//, "dist/");
  const fn = `${functionName || "(anonymous)"} ${where}${where ? `:${lineNumber + 1}` : ""}`;
  fns.set(fn, (fns.get(fn) ?? 0) + count);
  const f = where ? (where.startsWith("~/") ? where.split("/").slice(0, where.startsWith("~/@") ? 3 : 2).join("/") : where) : functionName;
  files.set(f, (files.get(f) ?? 0) + count);
}
// Inclusive time: a sample counts for every distinct function on its stack.
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const label = (n) => {
  const { functionName, url, lineNumber } = n.callFrame;
  const where = url.replace(/^file:\/\//, "").replace(/^.*\/node_modules\//, "~/").replace(/^.*\/dist\//, "dist/");
  return `${functionName || "(anonymous)"} ${where}${where ? `:${lineNumber + 1}` : ""}`;
};
const inclusive = new Map();
for (const [id, count] of self) {
  if (idle.has(id)) continue;
  const seen = new Set();
  for (let at = id; at !== undefined; at = parent.get(at)) {
    const l = label(byId.get(at));
    if (seen.has(l)) continue;
    seen.add(l);
    inclusive.set(l, (inclusive.get(l) ?? 0) + count);
  }
}
const pct = (n) => `${((100 * n) / total).toFixed(1).padStart(5)} %`;
console.log(`${total} busy samples of ${profile.samples.length}\n\nTop functions (self):`);
for (const [fn, n] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, Number(top))) console.log(`${pct(n)}  ${fn}`);
console.log("\nTop functions (inclusive), Tollgate's own (dist/):");
for (const [fn, n] of [...inclusive].filter(([l]) => l.includes(" dist/")).sort((a, b) => b[1] - a[1]).slice(0, Number(top))) console.log(`${pct(n)}  ${fn}`);
console.log("\nBy file / package (self):");
for (const [f, n] of [...files].sort((a, b) => b[1] - a[1]).slice(0, Number(top))) console.log(`${pct(n)}  ${f}`);
