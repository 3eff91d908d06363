// Shared by bench/run.mjs, bench/soak.mjs and the micro-benchmarks: ports,
// readiness, Redis reachability, the identity provider the JWT scenarios
// verify against, the 100-rule access policy, RSS sampling from /proc.
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { SignJWT } from "jose";

export const REDIS_URL = process.env.TOLLGATE_BENCH_REDIS_URL ?? process.env.TOLLGATE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";

/** A TCP port nothing listens on right now (loopback). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** Resolves once `url` answers a 2xx; rejects after `ms`. */
export async function waitFor(url, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not become ready`);
}

/** Whether something accepts TCP connections at the URL's host and port (Redis default 6379). */
export function reachable(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || 6379), timeout: 1000 });
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => (socket.destroy(), resolve(false)));
  });
}

/**
 * A loopback identity provider: a JWKS (one RS256 key, or Ed25519 with
 * `alg: "EdDSA"`) and an introspection endpoint that calls every token
 * active. Each is asked once per cache period, so it costs the measurement
 * nothing. `sign(claims)` issues a token that verifies against the JWKS.
 */
export async function startIdentityProvider({ alg = "RS256" } = {}) {
  const { privateKey, publicKey } = alg === "EdDSA" ? generateKeyPairSync("ed25519") : generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "bench-1", alg, use: "sig" }] });
  const exp = Math.floor(Date.now() / 1000) + 24 * 3600;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (req.url === "/jwks") return res.writeHead(200, { "content-type": "application/json" }).end(jwks);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ active: true, sub: "bench", exp }));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    audience: "llama-stack",
    sign: (claims) =>
      new SignJWT({ aud: "llama-stack", iss: issuer, ...claims }).setProtectedHeader({ alg, kid: "bench-1" }).setExpirationTime(exp).sign(privateKey),
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** The model every benchmark request names; the demo upstream serves it. */
export const BENCH_MODEL = "demo-small";

/**
 * The 100-rule access policy of scenarios 4–6, as data: 99 rules that do not
 * apply to the benchmark's user and model (each forbids another model to
 * members of a team the user is not in), then the one that decides (any
 * model may be read). Evaluated in order, first match decides: the worst
 * case, every rule is looked at.
 */
export const POLICY_RULES = [
  ...Array.from({ length: 99 }, (_, i) => ({ effect: "forbid", resource: `model::blocked-${i}`, team: `t${i}` })),
  { effect: "permit", resource: "model::*" },
];

/** {@link POLICY_RULES} as `server.auth.access_policy` YAML lines (indented for it). */
export function accessPolicyYaml(indent = "      ") {
  return POLICY_RULES.map((r) =>
    r.team
      ? `${indent}- {${r.effect}: {actions: [read], resource: "${r.resource}"}, when: "user with ${r.team} in teams"}`
      : `${indent}- {${r.effect}: {actions: [read], resource: "${r.resource}"}}`,
  );
}

/**
 * Resident set size of `pid` and its descendants (a supervisor and its
 * workers, nginx's master and worker), in bytes; undefined where /proc is
 * not there (not Linux) or the process is gone.
 */
export function treeRss(pid) {
  let total = 0;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (m) total += Number(m[1]) * 1024;
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      let children = "";
      try {
        children = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8");
      } catch {}
      for (const child of children.split(" ").filter(Boolean)) total += treeRss(Number(child)) ?? 0;
    }
  } catch {
    return undefined;
  }
  return total;
}

/** Samples {@link treeRss} of `pid` every `everyMs` until `stop()`, which returns the largest seen (bytes) or undefined. */
export function sampleRss(pid, everyMs = 200) {
  let max;
  const take = () => {
    const rss = treeRss(pid);
    if (rss !== undefined) max = Math.max(max ?? 0, rss);
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return max;
    },
  };
}
