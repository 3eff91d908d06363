/**
 * A Hono 4 app, served by @hono/node-server, whose requests go through Tollgate first.
 *
 *   AUTH_ENDPOINT=http://127.0.0.1:9000/validate PORT=3000 npx tsx examples/hono.ts
 *   curl -i http://127.0.0.1:3000/v1/hello                          # 401, OpenAI error envelope
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/hello
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/files/file-1
 *   curl -i http://127.0.0.1:3000/health                            # public: no key needed
 *
 * AUTH_ENDPOINT is a custom-auth endpoint in Llama Stack's format (see
 * examples/node-http.ts). Or set TOLLGATE_CONFIG to a tollgate.yaml.
 */
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { Hono } from "hono";
import { tollgate, type TollgateEnv } from "../src/adapters/hono.js"; // in your project: from "tollgate/hono"

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

const app = new Hono<TollgateEnv>(); // types c.get("user") and c.get("tollgate")
app.use("*", tg.middleware); // 400, 401, 403, 429, 503 are answered here, as OpenAI-style errors

app.get("/health", (c) => c.json({ status: "OK" }));

app.get("/v1/hello", (c) => c.json({ principal: c.get("user")?.principal, attributes: c.get("user")?.attributes }));

app.get("/v1/files/:id", (c) => {
  const id = c.req.param("id");
  // The access_policy on one resource; a denied read is a 404, so the file is not seen to exist.
  if (!tg.can(c.get("user"), "read", `file::${id}`, owners.get(id))) {
    return c.json({ error: { message: "No such file", type: "not_found_error", code: "not_found", param: null } }, 404);
  }
  return c.json({ id, object: "file" });
});

const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 3000), hostname: process.env.HOST ?? "127.0.0.1" }, (info: AddressInfo) => {
  console.log(`listening on http://${info.address}:${info.port}`);
});

// Stop taking requests, let in-flight ones finish, then release Tollgate's connections.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    server.close(() => void tg.close().then(() => process.exit(0)));
    if ("closeIdleConnections" in server) server.closeIdleConnections();
  });
}
