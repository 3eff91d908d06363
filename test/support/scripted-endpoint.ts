import http from "node:http";
import type { AddressInfo } from "node:net";

/** One request a scripted endpoint received. */
export interface ScriptedCall {
  method: string;
  body: string;
  authorization: string | undefined;
}

/**
 * An HTTP endpoint on 127.0.0.1 whose answers the test scripts, for what a
 * real identity provider never does (a 500, a body that is not JSON, a slow
 * answer). Every request is recorded, body read, before `answer` runs.
 */
export async function startScriptedEndpoint(answer: (body: string, req: http.IncomingMessage, res: http.ServerResponse) => void) {
  const calls: ScriptedCall[] = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      calls.push({ method: req.method ?? "", body, authorization: req.headers.authorization });
      answer(body, req, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    /** `http://127.0.0.1:<port>/introspect`. */
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/introspect`,
    calls,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
