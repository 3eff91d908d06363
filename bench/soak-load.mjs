#!/usr/bin/env node
// The soak's load generator (bench/soak.mjs), in its own process: POSTs `body`
// to `url` for `seconds`, each request with the next token of `tokenFile`
// (one per line, round-robin across all connections). Prints one JSON line.
// Usage: node bench/soak-load.mjs URL TOKEN_FILE SECONDS CONNECTIONS BODY
import { readFileSync } from "node:fs";
import autocannon from "autocannon";

const [url, tokenFile, seconds, connections, body] = process.argv.slice(2);
const tokens = readFileSync(tokenFile, "utf8").split("\n");
let next = 0;

const result = await autocannon({
  url,
  connections: Number(connections),
  duration: Number(seconds),
  requests: [
    {
      method: "POST",
      body,
      setupRequest(request) {
        const token = tokens[next];
        next = (next + 1) % tokens.length;
        request.headers = { ...request.headers, "content-type": "application/json", authorization: `Bearer ${token}` };
        return request;
      },
    },
  ],
});
console.log(JSON.stringify({ requests: result.requests.total, rps: Math.round(result.requests.average), non2xx: result.non2xx, errors: result.errors }));
