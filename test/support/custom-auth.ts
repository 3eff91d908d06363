import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";

/**
 * A custom-auth endpoint speaking Llama Stack's wire format, for tests: it
 * receives `POST {api_key, request: {path, headers, params}}` and answers 200
 * `{principal, attributes}` for the tokens it knows, 401 otherwise. Every
 * request it receives is recorded, parsed, in `requests`.
 */

export interface CustomAuthUser {
  principal: string;
  attributes?: Record<string, string[]>;
}

/** What one call to the endpoint carried. */
export interface CustomAuthCall {
  api_key: string;
  request: { path: string; headers: Record<string, string>; params: Record<string, string[]> };
}

export interface CustomAuthBehaviour {
  /** Token -> who it is. Tokens not listed get 401. */
  users?: Record<string, CustomAuthUser>;
  /** Answer every request with this status (and `body`, or a small JSON message). */
  status?: number;
  /** Wait this long before answering. */
  delayMs?: number;
  /** Answer 200 (or `status`) with this body: a string is sent as is, anything else as JSON. */
  body?: unknown;
}

export interface CustomAuthOptions extends CustomAuthBehaviour {
  /** Serve HTTPS with this key and certificate (PEM). */
  tls?: { key: string | Buffer; cert: string | Buffer };
}

export interface CustomAuthServer {
  /** The endpoint to configure: `http://127.0.0.1:<port>/validate`. */
  url: string;
  /** Every request received, in order. */
  requests: CustomAuthCall[];
  /** The HTTP headers of every request received, in the same order. */
  requestHeaders: http.IncomingHttpHeaders[];
  /** Changes how the endpoint answers from now on; fields not given keep their value. */
  setBehaviour(behaviour: CustomAuthBehaviour): void;
  close(): Promise<void>;
}

/** Starts the endpoint on 127.0.0.1 on a free port. */
export async function startCustomAuth(opts: CustomAuthOptions = {}): Promise<CustomAuthServer> {
  const behaviour: CustomAuthBehaviour = {
    users: opts.users ?? {},
    status: opts.status,
    delayMs: opts.delayMs,
    body: opts.body,
  };
  const requests: CustomAuthCall[] = [];
  const requestHeaders: http.IncomingHttpHeaders[] = [];
  const timers = new Set<NodeJS.Timeout>();

  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let call: CustomAuthCall | undefined;
      try {
        call = JSON.parse(Buffer.concat(chunks).toString("utf8")) as CustomAuthCall;
        requests.push(call);
        requestHeaders.push(req.headers);
      } catch {
        // Recorded as nothing: the provider under test sent something that is not JSON.
      }
      const answer = () => {
        const { status, body, users } = behaviour;
        if (status !== undefined || body !== undefined) {
          const payload = body === undefined ? { message: `status ${status}` } : body;
          const text = typeof payload === "string" ? payload : JSON.stringify(payload);
          res.writeHead(status ?? 200, { "content-type": "application/json" }).end(text);
          return;
        }
        const user = call ? users?.[call.api_key] : undefined;
        if (!user) {
          res.writeHead(401, { "content-type": "application/json" }).end(JSON.stringify({ message: "Authentication failed" }));
          return;
        }
        res
          .writeHead(200, { "content-type": "application/json" })
          .end(JSON.stringify({ principal: user.principal, attributes: user.attributes ?? {}, message: "Authentication successful" }));
      };
      if (behaviour.delayMs) {
        const timer = setTimeout(() => {
          timers.delete(timer);
          if (!res.destroyed) answer();
        }, behaviour.delayMs);
        timers.add(timer);
      } else {
        answer();
      }
    });
  };

  const server = opts.tls ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, handler) : http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}/validate`,
    requests,
    requestHeaders,
    setBehaviour(next) {
      Object.assign(behaviour, next);
    },
    async close() {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      // close() before cutting connections: nothing new slips in between.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}
