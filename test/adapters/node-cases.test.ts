import http from "node:http";
import { createTollgate } from "../../src/adapters/node.js";
import { describeAdapterCases, fileAccess, servedBy, whoami, type StartApp } from "./_cases.js";

/** The shared cases against the node:http adapter: `tollgate.authenticate(req, res)`, routing on the canonical path. */
const start: StartApp = async (options, ran) => {
  const tollgate = await createTollgate(options);
  const server = http.createServer(async (req, res) => {
    const ctx = await tollgate.authenticate(req, res);
    if (!ctx) return;
    ran();
    const file = /^\/v1\/files\/([^/]+)$/.exec(ctx.path);
    const body =
      ctx.path === "/health" || ctx.path === "/v1/whoami" || ctx.path === "/v1/telemetry/stats"
        ? whoami(ctx.user)
        : file
          ? fileAccess(tollgate.can, ctx.user, file[1]!)
          : undefined;
    res.writeHead(body ? 200 : 404, { "content-type": "application/json" }).end(JSON.stringify(body ?? {}));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return servedBy(server, tollgate);
};

describeAdapterCases("node:http", start);
