// What recording usage costs (issue 17), a section of `npm run bench`:
// scenario 4's gateway (usage recorded, the default) against 4n (the same
// with `usage: {enabled: false}`), for the JSON answer and the stream, in
// `rounds` rounds of new processes: two of each, four in all. In each of a
// row's `turns` turns every process runs for `slice` seconds; the figure is
// the median over all turns of the two 4s' throughput over the two 4ns'.
//
// Why so many processes, and why so long a warm-up, on this host:
// - A new process takes several seconds of load to reach its steady speed
//   (V8 compiling the request path): its CPU per request falls from about
//   2.4 ms in the first second to 0.7 ms after 5-8 s, with a tail of
//   (re)optimisations for 30 s. Two processes measured during that climb
//   differed by up to 25 %. Every process is warmed up first, `warmup`
//   one-second runs taking the kinds of answer in turn, the four processes
//   taking turns so that each has the same history.
// - Two warmed processes of one build still differ by several per cent for
//   as long as they live, and this host's speed swings by ±15 % from one
//   second to the next. So a row is many short turns in which the four
//   processes take turns (the order rotating), so that the swings fall on
//   all alike, and every turn compares two processes with two.
// - The control: the same turns split the other way, one 4 and one 4n
//   against the other 4 and 4n. Nothing differs between its halves but the
//   processes and their moments, so how far its median lies from 1.00 is
//   the method's own noise, for every row.
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
 * @param {(run: object, duration: number) => Promise<{rps: number, seconds: number, non2xx: number, errors: number, cpu: {gateway?: number, upstream?: number}}>} o.measure
 * @param {number} o.rounds each with four processes of its own
 * @param {number} o.turns per row and round: each process has a run in each
 * @param {number} o.slice seconds per run
 * @param {number} o.warmup runs per process before its first measured one
 */
export async function usageCostSection({ recorded, unrecorded, bodies, measure, rounds, turns, slice, warmup }) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const kinds = Object.keys(bodies);
  // The processes of a round: 4, 4n, 4, 4n. Recorded: 0 and 2; the control's halves: 0 and 1 against 2 and 3.
  const starts = [recorded, unrecorded, recorded, unrecorded];
  const RECORDED = [0, 2];
  const UNRECORDED = [1, 3];
  const HALVES = [
    [0, 1],
    [2, 3],
  ];
  /** Requests per second of the processes `indexes` in one turn (or one round's turns combined), summed. */
  const rpsOf = (runs, indexes) => sum(indexes.map((i) => runs[i].rps));
  /** Per kind: every turn's four runs, one per process, over all rounds; and per round, its turns combined. */
  const byTurn = Object.fromEntries(kinds.map((kind) => [kind, []]));
  const byRound = Object.fromEntries(kinds.map((kind) => [kind, []]));
  const checked = (run, result) => {
    if (result.non2xx > 0 || result.errors > 0) throw new Error(`usage cost: ${run.id} ${run.kind} had ${result.non2xx} non-2xx answers and ${result.errors} errors`);
    return result;
  };
  /** The process indexes in the order of turn `turn`: rotated, so each takes each place in turn. */
  const inTurn = (turn) => starts.map((_, i) => (i + turn) % starts.length);
  for (let round = 0; round < rounds; round++) {
    const gateways = [];
    try {
      for (const start of starts) gateways.push(await start());
      for (let w = 0; w < warmup; w++) {
        const kind = kinds[w % kinds.length];
        for (const i of inTurn(w)) checked({ ...gateways[i], kind }, await measure({ ...gateways[i], kind, body: bodies[kind] }, slice));
      }
      for (const kind of kinds) {
        const these = [];
        for (let turn = 0; turn < turns; turn++) {
          const runs = [];
          for (const i of inTurn(round + turn)) {
            const run = { ...gateways[i], kind, body: bodies[kind] };
            runs[i] = checked(run, await measure(run, slice));
          }
          these.push(runs);
        }
        byTurn[kind].push(...these);
        const combinedRuns = starts.map((_, i) => combined(these.map((runs) => runs[i])));
        byRound[kind].push(combinedRuns);
        const ratio = rpsOf(combinedRuns, RECORDED) / rpsOf(combinedRuns, UNRECORDED);
        const control = rpsOf(combinedRuns, HALVES[0]) / rpsOf(combinedRuns, HALVES[1]);
        console.error(
          `usage cost, round ${round + 1}/${rounds}, ${kind}: ${combinedRuns.map((r) => Math.round(r.rps)).join(" / ")} req/s (4, 4n, 4, 4n): ${ratio.toFixed(3)}, control ${control.toFixed(3)}`,
        );
      }
    } finally {
      await Promise.all(gateways.map((g) => g.stop()));
    }
  }
  const round3 = (x) => Math.round(x * 1000) / 1000;
  const rows = kinds.map((kind) => {
    const ratios = byTurn[kind].map((runs) => rpsOf(runs, RECORDED) / rpsOf(runs, UNRECORDED));
    const controls = byTurn[kind].map((runs) => rpsOf(runs, HALVES[0]) / rpsOf(runs, HALVES[1]));
    const roundRatios = byRound[kind].map((runs) => rpsOf(runs, RECORDED) / rpsOf(runs, UNRECORDED));
    const of = (indexes) => byTurn[kind].flatMap((runs) => indexes.map((i) => runs[i]));
    // CPU seconds per request, in µs: the share of a core over the run, divided by the requests per second.
    const perRequest = (runs, party) => {
      const values = runs.filter((x) => x.cpu?.[party] !== undefined).map((x) => (x.cpu[party] / x.rps) * 1e6);
      return values.length ? Math.round(median(values)) : null;
    };
    return {
      response: kind,
      rounds,
      turns: ratios.length,
      ratio: round3(median(ratios)),
      control: round3(median(controls)),
      round_ratio_min: round3(Math.min(...roundRatios)),
      round_ratio_max: round3(Math.max(...roundRatios)),
      rps_recorded: Math.round(median(of(RECORDED).map((r) => r.rps))),
      rps_unrecorded: Math.round(median(of(UNRECORDED).map((r) => r.rps))),
      gateway_us_per_request: { recorded: perRequest(of(RECORDED), "gateway"), unrecorded: perRequest(of(UNRECORDED), "gateway") },
      upstream_us_per_request: { recorded: perRequest(of(RECORDED), "upstream"), unrecorded: perRequest(of(UNRECORDED), "upstream") },
    };
  });
  const dash = (x) => (x === null ? "–" : String(x));
  const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const lines = [
    "### What recording usage costs (issue 17)",
    "",
    `Scenario 4 (usage recorded) against 4n (\`usage: {enabled: false}\`) in ${count(rounds, "round")} of four new processes (4, 4n, 4, 4n), each warmed up by ${count(warmup, "run")} of ${slice} s first ` +
      "(a new process takes several seconds of load to reach its steady speed). " +
      `Each row has ${count(turns, "turn")} per round in which the four processes take turns (the order rotating), ${slice} s of load each: this host's speed swings by ±15 % from one second to the next. ` +
      "The figure is the median over every turn of the two 4s' throughput over the two 4ns'. " +
      "The control splits the same turns the other way (one 4 and one 4n against the others): how far it lies from 1.00 is the method's own noise. " +
      "Beside them, each round's ratio over all its turns (two processes of one build differ by several per cent for as long as they live); " +
      "the gateway's CPU per request (its process tree, its SQLite quota thread included) and the demo upstream's, medians over the runs. " +
      "stream+usage: the client asks for usage itself (`stream_options.include_usage`), so the upstream writes the usage chunk in both and the gateway removes nothing.",
    "",
    ...markdownTable(
      [
        ["response"],
        ["median ratio 4 / 4n", "r"],
        ["control", "r"],
        ["turns", "r"],
        ["rounds' ratios", "r"],
        ["req/s 4", "r"],
        ["req/s 4n", "r"],
        ["gateway µs/request 4 / 4n", "r"],
        ["upstream µs/request 4 / 4n", "r"],
      ],
      rows.map((r) => [
        r.response,
        `${r.ratio.toFixed(3)} ×`,
        `${r.control.toFixed(3)} ×`,
        r.turns,
        `${r.round_ratio_min.toFixed(2)}–${r.round_ratio_max.toFixed(2)}`,
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
