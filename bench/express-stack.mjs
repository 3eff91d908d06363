#!/usr/bin/env node
// Scenario 6: the gateway a Node developer would write today for the same
// job, from the usual packages, each used as its README shows:
//   express.json()            body parsed (the policy needs `model`)
//   jose jwtVerify            JWT checked against the same JWKS (createRemoteJWKSet caches the keys)
//   express-rate-limit        a per-user request limit (its default in-memory store)
//   a 100-rule policy         the same rules as Tollgate's access_policy, evaluated in plain JS
//   http-proxy-middleware     forwards to the upstream (fixRequestBody re-sends the parsed body)
// Usage: node bench/express-stack.mjs --port N --upstream URL --jwks URL --issuer ISS --audience AUD
import { parseArgs } from "node:util";
import express from "express";
import { rateLimit } from "express-rate-limit";
import { createProxyMiddleware, fixRequestBody } from "http-proxy-middleware";
import { createRemoteJWKSet, jwtVerify } from "jose";
import { POLICY_RULES } from "./support.mjs";

const { values } = parseArgs({
  options: { port: { type: "string" }, upstream: { type: "string" }, jwks: { type: "string" }, issuer: { type: "string" }, audience: { type: "string" } },
});
const JWKS = createRemoteJWKSet(new URL(values.jwks));

/** First rule whose resource matches (exact, or a `*` suffix) and whose team condition holds decides. */
function allowed(user, resource) {
  for (const rule of POLICY_RULES) {
    const matches = rule.resource.endsWith("*") ? resource.startsWith(rule.resource.slice(0, -1)) : resource === rule.resource;
    if (!matches) continue;
    if (rule.team && !user.teams.includes(rule.team)) continue;
    return rule.effect === "permit";
  }
  return false;
}

const app = express();
app.disable("x-powered-by");
app.use(express.json({ limit: "1mb" }));
app.use(async (req, res, next) => {
  const match = /^Bearer (.+)$/i.exec(req.headers.authorization ?? "");
  if (!match) return res.status(401).json({ error: { message: "missing token" } });
  try {
    const { payload } = await jwtVerify(match[1], JWKS, { issuer: values.issuer, audience: values.audience, algorithms: ["RS256"] });
    req.user = { sub: payload.sub, teams: Array.isArray(payload.groups) ? payload.groups : [] };
    next();
  } catch {
    res.status(401).json({ error: { message: "invalid token" } });
  }
});
app.use(
  rateLimit({
    windowMs: 1000,
    limit: 1_000_000_000,
    standardHeaders: "draft-8",
    legacyHeaders: false,
    keyGenerator: (req) => req.user.sub,
  }),
);
app.use((req, res, next) => {
  if (req.method === "POST" && typeof req.body?.model === "string" && !allowed(req.user, `model::${req.body.model}`)) {
    return res.status(404).json({ error: { message: "model not found" } });
  }
  next();
});
app.use(createProxyMiddleware({ target: values.upstream, changeOrigin: true, on: { proxyReq: fixRequestBody } }));
app.listen(Number(values.port), "127.0.0.1");

// Exit on SIGTERM through process.exit, so that `--cpu-prof` writes its profile.
process.once("SIGTERM", () => process.exit(0));
