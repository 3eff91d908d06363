#!/usr/bin/env node
// The reference point for a Node gateway: a bare reverse proxy (node:http +
// undici, keep-alive pool, streaming both ways) with no auth and no checks.
// Usage: node bench/bare-proxy.mjs --port N --upstream URL
import http from "node:http";
import { parseArgs } from "node:util";
import { Agent } from "undici";

const { values } = parseArgs({ options: { port: { type: "string" }, upstream: { type: "string" } } });
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
