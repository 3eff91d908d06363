#!/usr/bin/env node
// The reference point for a Node gateway: a bare reverse proxy (node:http +
// undici, keep-alive pool, streaming both ways) with no auth and no checks.
// With `--workers N` (N > 1) it runs N processes sharing the port through
// node:cluster, spread the way `tollgate serve --workers N` spreads them
// (cluster's default round-robin), so that the two compare as equals.
// Usage: node bench/bare-proxy.mjs --port N --upstream URL [--workers N]
import cluster from "node:cluster";
import http from "node:http";
import { parseArgs } from "node:util";
import { Agent } from "undici";

const { values } = parseArgs({ options: { port: { type: "string" }, upstream: { type: "string" }, workers: { type: "string", default: "1" } } });
const workers = Number(values.workers);

if (workers > 1 && cluster.isPrimary) {
  // The primary only owns the socket and hands connections out; a worker that dies is not replaced (a benchmark should fail loudly instead).
  for (let i = 0; i < workers; i++) cluster.fork();
  let stopping = false;
  cluster.on("exit", (worker, code, signal) => {
    if (!stopping) console.error(`bare-proxy: worker ${worker.process.pid} exited (${signal ?? code})`);
    else if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
  });
  // SIGTERM: stop the workers (each writes its `--cpu-prof` profile on the way out), then exit.
  process.once("SIGTERM", () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill("SIGTERM");
    setTimeout(() => process.exit(0), 2_000).unref();
  });
} else {
  const upstream = new URL(values.upstream);
  const agent = new Agent({ keepAliveTimeout: 10_000 });
  const HOP = new Set(["connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "proxy-connection", "host"]);

  http
    .createServer(async (req, res) => {
      const headers = {};
      for (const [name, value] of Object.entries(req.headers)) if (!HOP.has(name)) headers[name] = value;
      try {
        const hasBody = req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined;
        const up = await agent.request({ origin: upstream.origin, path: req.url, method: req.method, headers, body: hasBody ? req : null });
        const out = {};
        for (const [name, value] of Object.entries(up.headers)) if (!HOP.has(name)) out[name] = value;
        res.writeHead(up.statusCode, out);
        up.body.pipe(res);
      } catch {
        res.writeHead(502).end();
      }
    })
    .listen(Number(values.port), "127.0.0.1");

  // Exit on SIGTERM through process.exit, so that `--cpu-prof` writes its profile.
  process.once("SIGTERM", () => process.exit(0));
}
