/**
 * A plain node:http server whose requests go through Tollgate first.
 *
 *   AUTH_ENDPOINT=http://127.0.0.1:9000/validate PORT=3000 npx tsx examples/node-http.ts
 *   curl -i http://127.0.0.1:3000/v1/hello                          # 401, OpenAI error envelope
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/hello
 *   curl -i http://127.0.0.1:3000/health                            # public: no key needed
 *
 * AUTH_ENDPOINT is a custom-auth endpoint in Llama Stack's format: it gets
 * POST {api_key, request: {path, headers, params}} and answers 200
 * {principal, attributes} to accept. Or set TOLLGATE_CONFIG to a tollgate.yaml.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createTollgate } from "../src/index.js"; // in your project: from "tollgate"

const tollgate = await createTollgate(
  process.env.TOLLGATE_CONFIG
    ? { configFile: process.env.TOLLGATE_CONFIG }
    : {
        config: {
          server: {
            public_paths: ["/health"],
            auth: {
              provider_config: {
                type: "custom",
                endpoint: process.env.AUTH_ENDPOINT ?? "http://127.0.0.1:9000/validate",
                timeout_ms: 5000,
              },
            },
          },
        },
      },
);

const server = http.createServer(async (req, res) => {
  const ctx = await tollgate.authenticate(req, res);
  if (!ctx) return; // Tollgate has already answered: 400, 401 or 503, as an OpenAI-style error

  if (ctx.path === "/health") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"OK"}');
    return;
  }
  // ctx.path is the canonical path: route on it, not on req.url.
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ path: ctx.path, principal: ctx.user?.principal ?? null, attributes: ctx.user?.attributes ?? {} }));
});

server.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  console.log(`listening on http://${address}:${port}`);
});

// Stop taking requests, let in-flight ones finish, then release Tollgate's connections.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    server.close(() => void tollgate.close().then(() => process.exit(0)));
    server.closeIdleConnections();
  });
}
