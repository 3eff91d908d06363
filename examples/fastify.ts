/**
 * A Fastify 5 app whose requests go through Tollgate first.
 *
 *   AUTH_ENDPOINT=http://127.0.0.1:9000/validate PORT=3000 npx tsx examples/fastify.ts
 *   curl -i http://127.0.0.1:3000/v1/hello                          # 401, OpenAI error envelope
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/hello
 *   curl -i -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/v1/files/file-1
 *   curl -i http://127.0.0.1:3000/health                            # public: no key needed
 *
 * AUTH_ENDPOINT is a custom-auth endpoint in Llama Stack's format (see
 * examples/node-http.ts). Or set TOLLGATE_CONFIG to a tollgate.yaml.
 */
import Fastify from "fastify";
import { tollgatePlugin } from "../src/adapters/fastify.js"; // in your project: from "tollgate/fastify"

const app = Fastify();
await app.register(
  tollgatePlugin,
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

app.get("/health", async () => ({ status: "OK" }));

app.get("/v1/hello", async (request) => ({ principal: request.user?.principal, attributes: request.user?.attributes }));

app.get<{ Params: { id: string } }>("/v1/files/:id", async (request, reply) => {
  const { id } = request.params;
  // The access_policy on one resource; a denied read is a 404, so the file is not seen to exist.
  if (!app.tollgate.can(request.user, "read", `file::${id}`, owners.get(id))) {
    return reply.code(404).send({ error: { message: "No such file", type: "not_found_error", code: "not_found", param: null } });
  }
  return { id, object: "file" };
});

const url = await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? "127.0.0.1" });
console.log(`listening on ${url}`);

// app.close() stops taking requests, lets in-flight ones finish, then closes Tollgate (the plugin's onClose).
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void app.close().then(() => process.exit(0)));
}
