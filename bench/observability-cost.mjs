// What one request's log line, metric observations and trace cost (issue 16,
// issue 18), a section of `npm run bench`: scenario 4's gateway four times
// over, the same load, differing only in `logging.level`, `metrics.enabled`
// and `tracing`:
//   quiet     level warn (no line per request), metrics on: scenario 4 as configured
//   logged    level info: one `request` line per request, written to a file
//   unmetered level warn, metrics off
//   traced    level warn, metrics on, tracing every request (sample_ratio 1.0)
//             to an OTLP/HTTP receiver on loopback ({@link startOtlpSink})
// The cost is read from the gateway's CPU time per request (its CPU seconds
// over the requests it answered in the same runs), which is steadier than
// req/s on a machine shared with the load generator and the upstream.
import { once } from "node:events";
import http from "node:http";
import { markdownTable } from "./support.mjs";

/**
 * An OTLP/HTTP receiver on loopback that answers every export with 200 and
 * counts what arrived: bodies, bytes, spans (their `"spanId"` keys) and
 * server spans (`"kind":2`, one per traced request), without a JSON parse,
 * so that it takes little of the machine the gateway is measured on.
 */
export async function startOtlpSink() {
  const counts = { exports: 0, bytes: 0, spans: 0, requests: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("latin1");
      counts.bytes += text.length;
      counts.spans += text.split('"spanId"').length - 1;
      counts.requests += text.split('"kind":2,').length - 1;
      counts.exports++;
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    counts,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * `variants`: `{ quiet, logged, unmetered, traced }`, each `{ id, name, url, headers,
 * pid, log? }` (`log()`: the text the gateway has logged so far). `measure(run,
 * duration)` is the main table's load run. `sink`: the receiver `traced` exports to.
 */
export async function observabilityCostSection({ variants, body, measure, duration, warmup, rounds, sink }) {
  const runs = Object.entries(variants).map(([key, v]) => ({ ...v, key, kind: "json", body, results: [], rss: undefined }));
  if (warmup > 0) for (const r of runs) await measure(r, warmup);
  const logBefore = variants.logged.log?.().length ?? 0;

  for (let round = 0; round < rounds; round++) {
    for (const r of round % 2 === 0 ? runs : [...runs].reverse()) {
      const result = await measure(r, duration);
      if (result.non2xx > 0 || result.errors > 0) console.error(`bench: observability cost, ${r.id} ${r.name}: ${result.non2xx} non-2xx answers, ${result.errors} errors`);
      r.results.push(result);
      console.error(`round ${round + 1}/${rounds} observability cost ${r.id} ${r.name}: ${Math.round(result.rps)} req/s`);
    }
  }
  const rows = runs.map((r) => ({
    id: r.id,
    key: r.key,
    scenario: r.name,
    rps: Math.round(median(r.results.map((x) => x.rps))),
    // The gateway's CPU seconds over the run (share × the run's wall time) per request answered, in µs.
    cpu_us_per_request: Math.round(median(r.results.map((x) => ((x.cpu?.gateway ?? NaN) * x.seconds * 1e6) / (x.rps * duration))) * 10) / 10,
  }));
  const get = (key) => rows.find((r) => r.key === key);
  // What the measured runs logged, by message: the request line, and any other line a request writes at info.
  const messages = {};
  for (const line of (variants.logged.log?.() ?? "").slice(logBefore).split("\n").filter(Boolean)) {
    const msg = JSON.parse(line).msg ?? "?";
    messages[msg] = (messages[msg] ?? 0) + 1;
  }
  const linesPerRequest = messages.request ? Object.values(messages).reduce((a, b) => a + b, 0) / messages.request : null;
  const loggingUs = get("logged").cpu_us_per_request - get("quiet").cpu_us_per_request;
  const cost = {
    logging_us: Math.round(loggingUs * 10) / 10,
    log_line_us: linesPerRequest ? Math.round((loggingUs / linesPerRequest) * 10) / 10 : null,
    metrics_us: Math.round((get("quiet").cpu_us_per_request - get("unmetered").cpu_us_per_request) * 10) / 10,
    tracing_us: Math.round((get("traced").cpu_us_per_request - get("quiet").cpu_us_per_request) * 10) / 10,
    // Spans the receiver got per server span (one per traced request).
    spans_per_request: sink.counts.requests > 0 ? Math.round((sink.counts.spans / sink.counts.requests) * 100) / 100 : null,
    spans_exported: sink.counts.spans,
    lines_per_request: linesPerRequest === null ? null : Math.round(linesPerRequest * 100) / 100,
    lines_by_message: messages,
  };
  const lines = [
    "### What logging and metrics cost per request",
    "",
    `Scenario 4's gateway four times (logging, metrics, tracing), json, the main table's load (${duration} s per run, median of ${rounds} round(s)); CPU: the gateway's CPU time per answered request.`,
    "",
    ...markdownTable(
      [["#", "l"], ["scenario", "l"], ["req/s", "r"], ["gateway CPU µs per request", "r"]],
      rows.map((r) => [r.id, r.scenario, r.rps, r.cpu_us_per_request]),
    ),
    "",
    `- logging at info against warn: ${cost.logging_us} µs of gateway CPU per request for ${cost.lines_per_request ?? "?"} lines (written to a file; by message: ${Object.entries(messages).map(([m, n]) => `${m} ${n}`).join(", ") || "none"}), ${cost.log_line_us ?? "?"} µs a line`,
    `- metrics on against off (every observation a request makes): ${cost.metrics_us} µs of gateway CPU per request`,
    `- tracing on (every request sampled, exported over OTLP/HTTP JSON to a local receiver) against off: ${cost.tracing_us} µs of gateway CPU per request, ${cost.spans_per_request} spans exported per request (docs/tracing.md)`,
    "",
    "Differences of a few µs are within the noise of one run on a shared 2-core machine.",
    "",
  ];
  return { rows, lines, cost };
}
