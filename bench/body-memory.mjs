#!/usr/bin/env node
// Peak memory of the gateway while it reads large inference bodies: four
// concurrent streamed chat completions of 95 MB each, with a token budget on
// (so the gateway reads every body for its model and usage options and asks
// the upstream for usage). Prints the gateway's resident memory before, its
// peak (VmHWM from /proc) and each request's status.
//
//   npm run build && node bench/body-memory.mjs [--dist DIR] [--buffered BYTES] [--size BYTES] [--count N]
//
// --dist: another build to measure (e.g. an older commit's dist/); --buffered:
// server.max_buffered_bytes (omitted: the key is not written, for builds that
// do not know it).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { freePort, waitFor } from "./support.mjs";

const { values } = parseArgs({
  options: {
    dist: { type: "string", default: resolve(import.meta.dirname, "../dist") },
    buffered: { type: "string" },
    size: { type: "string", default: String(95 * 1000 * 1000) },
    count: { type: "string", default: "4" },
  },
});
const size = Number(values.size);
const count = Number(values.count);

const dir = mkdtempSync(join(tmpdir(), "tollgate-body-memory-"));
const children = [];
try {
  const upstream = spawn(process.execPath, [join(values.dist, "demo/upstream.js"), "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(upstream);
  const upstreamUrl = await new Promise((done) => createInterface({ input: upstream.stdout }).once("line", (line) => done(line.trim())));

  const port = await freePort();
  const server = {
    auth: { provider_config: { type: "upstream_header", principal_header: "x-user" } },
    quota: { kvstore: { type: "sqlite", db_path: join(dir, "quota.db") }, limits: [{ tokens: 1_000_000_000, period: "day" }] },
    max_body_bytes: 100 * 1024 * 1024,
  };
  if (values.buffered !== undefined) server.max_buffered_bytes = Number(values.buffered);
  const config = join(dir, "tollgate.yaml");
  writeFileSync(config, JSON.stringify({ server, upstream: { url: upstreamUrl }, logging: { level: "warn" } }));
  const gateway = spawn(process.execPath, [join(values.dist, "cli/main.js"), "serve", "--config", config, "--port", String(port)], { stdio: ["ignore", "ignore", "inherit"] });
  children.push(gateway);
  await waitFor(`http://127.0.0.1:${port}/health`);

  const rss = (field) => Number(/(\d+) kB/.exec(readFileSync(`/proc/${gateway.pid}/status`, "utf8").split("\n").find((l) => l.startsWith(field)))[1]) * 1024;
  // The padding goes in a system message: the demo upstream echoes the last user message only.
  const head = '{"model":"demo-small","stream":true,"messages":[{"role":"system","content":"';
  const tail = '"},{"role":"user","content":"hi"}]}';
  const body = Buffer.alloc(size, 0x61);
  body.write(head, 0);
  body.write(tail, size - tail.length);

  const before = rss("VmRSS:");
  const started = Date.now();
  const statuses = await Promise.all(
    Array.from({ length: count }, (_, i) =>
      new Promise((done) => {
        const req = http.request(
          { host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", headers: { "content-type": "application/json", "content-length": size, "x-user": `u${i}` } },
          (res) => {
            res.resume();
            res.on("end", () => done(res.statusCode));
            res.on("error", () => done(`${res.statusCode} (cut)`));
          },
        );
        req.on("error", (err) => done(err.code ?? String(err)));
        req.end(body);
      }),
    ),
  );
  const seconds = (Date.now() - started) / 1000;
  const peak = rss("VmHWM:");
  const mb = (n) => `${(n / 1e6).toFixed(0)} MB`;
  console.log(`${values.dist}: ${count} x ${mb(size)} bodies${values.buffered ? `, max_buffered_bytes ${values.buffered}` : ""}`);
  console.log(`  RSS before ${mb(before)}, peak ${mb(peak)} (+${mb(peak - before)}), ${seconds.toFixed(1)} s`);
  console.log(`  statuses: ${statuses.join(", ")}`);
} finally {
  for (const child of children.reverse()) child.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
