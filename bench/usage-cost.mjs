// What recording usage costs (issue 17), a section of `npm run bench`:
// scenario 4's gateway (usage recorded, the default) against 4n (the same
// with `usage: {enabled: false}`), in `pairs` pairs of short runs, each run
// cut into one-second slices that take turns with the other side's (their
// order alternating), for the JSON answer and the stream. The ratio of each
// pair is taken, and the median of those ratios is the figure: drift on a
// shared machine (other tenants of the host, thermal; this host's speed
// swings by several per cent from one second to the next) moves both runs
// of a pair alike, where the main table's medians of three runs each can
// land a slow run of one against a fast run of the other.
//
// Every pair has two gateway processes of its own, started for it and
// stopped after it. Two processes of the same build and config differ by
// several per cent in throughput for as long as they live (where V8 placed
// and how it compiled the hot code, which core the scheduler favours):
// with one process of each for the whole section, that difference lands in
// every pair alike and the median keeps it. A control row, 4 against 4,
// shows what is left of that noise: its median should be 1.00.
//
// The gateway's and the upstream's CPU time per request are shown beside
// it: with usage on, a stream's upstream also writes the usage chunk the
// gateway asks for. A third body, a stream whose client asks for usage
// itself (`stream_options.include_usage`, as the openai client can), has
// the upstream do the same work either way: its ratio is the gateway's own
// cost of recording a stream.
import { markdownTable } from "./support.mjs";

/**
 * @typedef {{id: string, name: string, url: string, headers: object, pid: number, stop: () => Promise<void>}} Gateway
 * @param {object} o
 * @param {() => Promise<Gateway>} o.recorded starts a gateway as scenario 4
 * @param {() => Promise<Gateway>} o.unrecorded starts a gateway as scenario 4n
 * @param {Record<string, string>} o.bodies the request body of each kind of answer ("json", "stream", "stream+usage")
 * @param {string} o.control the kind of answer of the control row (4 against 4)
 * @param {(run: object, duration: number) => Promise<{rps: number, seconds: number, non2xx: number, errors: number, cpu: {gateway?: number, upstream?: number}}>} o.measure
 * @param {number} o.pairs
 * @param {number} o.duration seconds per run
 * @param {number} o.warmup seconds, once per gateway process before its run
 */
export async function usageCostSection({ recorded, unrecorded, bodies, control, measure, pairs, duration, warmup }) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const rows = [];
  const kinds = [...Object.keys(bodies).map((kind) => ({ kind, label: kind, against: unrecorded })), { kind: control, label: `control: ${control}, 4 against 4`, against: recorded }];
  for (const { kind, label, against } of kinds) {
    const results = { on: [], off: [] };
    for (let p = 0; p < pairs; p++) {
      const gateways = { on: await recorded(), off: await against() };
      try {
        const runs = { on: { ...gateways.on, kind, body: bodies[kind] }, off: { ...gateways.off, kind, body: bodies[kind] } };
        if (warmup > 0) for (const side of ["on", "off"]) await measure(runs[side], warmup);
        // Slices of one second taking turns: the host's swings (several per cent, over seconds) fall on both sides alike.
        const sliced = { on: [], off: [] };
        for (let slice = 0; slice < Math.max(1, Math.round(duration)); slice++) {
          for (const side of (p + slice) % 2 === 0 ? ["on", "off"] : ["off", "on"]) {
            const result = await measure(runs[side], Math.min(1, duration));
            if (result.non2xx > 0 || result.errors > 0) throw new Error(`usage cost: ${runs[side].id} ${kind} had ${result.non2xx} non-2xx answers and ${result.errors} errors`);
            sliced[side].push(result);
          }
        }
        for (const side of ["on", "off"]) results[side].push(combined(sliced[side]));
      } finally {
        await Promise.all([gateways.on.stop(), gateways.off.stop()]);
      }
      console.error(`usage cost, pair ${p + 1}/${pairs}, ${label}: ${Math.round(results.on[p].rps)} / ${Math.round(results.off[p].rps)} req/s = ${(results.on[p].rps / results.off[p].rps).toFixed(3)}`);
    }
    const ratios = results.on.map((r, i) => r.rps / results.off[i].rps);
    // CPU seconds per request, in µs: the share of a core over the run, divided by the requests per second.
    const perRequest = (xs, party) => {
      const values = xs.filter((x) => x.cpu?.[party] !== undefined).map((x) => (x.cpu[party] / x.rps) * 1e6);
      return values.length ? Math.round(median(values)) : null;
    };
    rows.push({
      response: label,
      pairs,
      ratio: Math.round(median(ratios) * 1000) / 1000,
      ratio_min: Math.round(Math.min(...ratios) * 1000) / 1000,
      ratio_max: Math.round(Math.max(...ratios) * 1000) / 1000,
      rps_recorded: Math.round(median(results.on.map((r) => r.rps))),
      rps_unrecorded: Math.round(median(results.off.map((r) => r.rps))),
      gateway_us_per_request: { recorded: perRequest(results.on, "gateway"), unrecorded: perRequest(results.off, "gateway") },
      upstream_us_per_request: { recorded: perRequest(results.on, "upstream"), unrecorded: perRequest(results.off, "upstream") },
    });
  }
  const dash = (x) => (x === null ? "–" : String(x));
  const lines = [
    "### What recording usage costs (issue 17)",
    "",
    `Scenario 4 (usage recorded) against 4n (\`usage: {enabled: false}\`), ${pairs} pair${pairs === 1 ? "" : "s"} of ${duration}-second runs, each in one-second slices taking turns with the other's; ` +
      "the figure is the median of the pairs' throughput ratios (each pair's two runs share the machine's state of the moment). " +
      "Each pair has two gateway processes of its own, started for it after the last pair's were stopped: two processes of one build differ by several per cent for as long as they live. " +
      `The control row runs 4 against 4 the same way: how far its median is from 1.00 is the method's own noise. ` +
      "CPU per request: the gateway's process tree (its SQLite quota thread included) and the demo upstream, medians over the runs. " +
      "stream+usage: the client asks for usage itself (`stream_options.include_usage`), so the upstream writes the usage chunk in both runs and the gateway removes nothing.",
    "",
    ...markdownTable(
      [["response"], ["median ratio 4 / 4n", "r"], ["range of the pairs", "r"], ["req/s 4", "r"], ["req/s 4n", "r"], ["gateway µs/request 4 / 4n", "r"], ["upstream µs/request 4 / 4n", "r"]],
      rows.map((r) => [
        r.response,
        `${r.ratio.toFixed(3)} ×`,
        `${r.ratio_min.toFixed(2)}–${r.ratio_max.toFixed(2)}`,
        r.rps_recorded,
        r.rps_unrecorded,
        `${dash(r.gateway_us_per_request.recorded)} / ${dash(r.gateway_us_per_request.unrecorded)}`,
        `${dash(r.upstream_us_per_request.recorded)} / ${dash(r.upstream_us_per_request.unrecorded)}`,
      ]),
    ),
    "",
  ];
  return { lines, rows };
}

/** Runs of one side as one: requests per second and CPU shares over their whole time. */
function combined(runs) {
  const seconds = runs.reduce((sum, r) => sum + r.seconds, 0);
  const weighted = (get) => (runs.some((r) => get(r) === undefined) ? undefined : runs.reduce((sum, r) => sum + get(r) * r.seconds, 0) / seconds);
  return {
    rps: runs.reduce((sum, r) => sum + r.rps * r.seconds, 0) / seconds,
    seconds,
    cpu: { gateway: weighted((r) => r.cpu?.gateway), upstream: weighted((r) => r.cpu?.upstream) },
  };
}
