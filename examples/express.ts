/**
 * An Express 5 app whose requests go through Tollgate first.
 *
 *   AUTH_ENDPOINT=http://127.0.0.1:9000/validate PORT=3000 npx tsx examples/express.ts
 *   curl -i http://127.0.0.1:3000/v1/hello                          # 401, OpenAI error envelope
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/hello
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/files/file-1
 *   curl -i http://127.0.0.1:3000/health                            # public: no key needed
 *
 * AUTH_ENDPOINT is a custom-auth endpoint in Llama Stack's format (see
 * examples/node-http.ts). Or set TOLLGATE_CONFIG to a tollgate.yaml.
 */
import type { AddressInfo } from "node:net";
import express from "express";
import { tollgate } from "../src/adapters/express.js"; // in your project: from "tollgate/express"

const tg = await tollgate(
  process.env.TOLLGATE_CONFIG
    ? { configFile: process.env.TOLLGATE_CONFIG }
    : {
        config: {
          server: {
            public_paths: ["/health"],
            auth: { provider_config: { type: "custom", endpoint: process.env.AUTH_ENDPOINT ?? "http://127.0.0.1:9000/validate", timeout_ms: 5000 } },
          },
        },
      },
);

// Who created each file: in a real app, your database.
const owners = new Map([["file-1", { principal: "alice", attributes: { teams: ["ml"] } }]]);

const app = express();
app.use(tg.middleware); // 400, 401, 403, 429, 503 are answered here, as OpenAI-style errors

app.get("/health", (_req, res) => {
  res.json({ status: "OK" });
});

app.get("/v1/hello", (req, res) => {
  res.json({ principal: req.user?.principal, attributes: req.user?.attributes });
});

app.get("/v1/files/:id", (req, res) => {
  // The access_policy on one resource; a denied read is a 404, so the file is not seen to exist.
  if (!tg.can(req.user, "read", `file::${req.params.id}`, owners.get(req.params.id))) {
    res.status(404).json({ error: { message: "No such file", type: "not_found_error", code: "not_found", param: null } });
    return;
  }
  res.json({ id: req.params.id, object: "file" });
});

const server = app.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  console.log(`listening on http://${address}:${port}`);
});

// Stop taking requests, let in-flight ones finish, then release Tollgate's connections.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    server.close(() => void tg.close().then(() => process.exit(0)));
    server.closeIdleConnections();
  });
}
