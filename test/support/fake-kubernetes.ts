import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";

/**
 * A stand-in for a Kubernetes API server's SelfSubjectReview endpoint
 * (`POST /apis/authentication.k8s.io/v1/selfsubjectreviews`), wire format as
 * the real one: 201 Created with the review echoed and `status.userInfo`
 * filled in for a known bearer token; 401 with a `Status` object
 * (`reason: Unauthorized`) for an unknown one.
 */

export interface FakeKubernetesUser {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface FakeKubernetes {
  url: string;
  requests: { method: string; path: string; authorization: string | undefined; body: string }[];
  users: Record<string, FakeKubernetesUser>;
  failWith: number | undefined;
  delayMs: number;
  close(): Promise<void>;
}

const REVIEW_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

export async function startFakeKubernetes(
  users: Record<string, FakeKubernetesUser> = {},
  tls?: { key: string | Buffer; cert: string | Buffer },
): Promise<FakeKubernetes> {
  const state: Omit<FakeKubernetes, "close" | "url"> = { requests: [], users, failWith: undefined, delayMs: 0 };
  const status = (code: number, reason: string, message: string) => ({
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    code,
  });
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      state.requests.push({ method: req.method ?? "", path: req.url ?? "", authorization: req.headers.authorization, body });
      const send = (code: number, payload: unknown) => res.writeHead(code, { "content-type": "application/json", "audit-id": crypto.randomUUID() }).end(JSON.stringify(payload));
      const answer = () => {
        if (state.failWith !== undefined) return send(state.failWith, status(state.failWith, "InternalError", "Internal error occurred"));
        const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
        const user = token === undefined ? undefined : state.users[token];
        if (!user) return send(401, status(401, "Unauthorized", "Unauthorized"));
        if (req.method !== "POST" || req.url !== REVIEW_PATH) return send(404, status(404, "NotFound", "the server could not find the requested resource"));
        let review: { apiVersion?: string; kind?: string };
        try {
          review = JSON.parse(body) as typeof review;
        } catch {
          return send(400, status(400, "BadRequest", "the object provided is unrecognized"));
        }
        if (review.kind !== "SelfSubjectReview" || review.apiVersion !== "authentication.k8s.io/v1") {
          return send(400, status(400, "BadRequest", "the object provided is unrecognized"));
        }
        send(201, {
          kind: "SelfSubjectReview",
          apiVersion: "authentication.k8s.io/v1",
          metadata: { creationTimestamp: new Date().toISOString() },
          status: {
            userInfo: {
              username: user.username,
              uid: user.uid ?? crypto.randomUUID(),
              groups: user.groups ?? ["system:authenticated"],
              ...(user.extra ? { extra: user.extra } : {}),
            },
          },
        });
      };
      if (state.delayMs > 0) setTimeout(() => !res.destroyed && answer(), state.delayMs);
      else answer();
    });
  };
  const server = tls ? https.createServer({ key: tls.key, cert: tls.cert }, handler) : http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return Object.assign(state, {
    url: `${tls ? "https" : "http"}://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      // close() before cutting connections: nothing new slips in between.
      const closed = new Promise((r) => server.close(r));
      server.closeAllConnections();
      await closed;
    },
  }) as FakeKubernetes;
}
