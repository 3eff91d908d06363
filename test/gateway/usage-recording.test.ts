/**
 * Usage recording end to end: two gateway processes on one PostgreSQL,
 * the demo upstream as a process, the `openai` client with a Tollgate API
 * key. Every forwarded request lands in the usage table exactly once, with
 * its tokens (JSON and streamed answers) and its cost from `pricing`;
 * refused requests are not counted; SIGTERM writes what was still held.
 *
 * The demo upstream counts words: "hello there" is 2 prompt tokens and
 * "You said: hello there" 4 completion tokens. At 1000 per million input
 * and 2000 per million output, one request costs 0.002 + 0.008 = 0.01.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import type { RecordStore, UsageRow } from "../../src/core/stores/types.js";
import { eventually } from "../support/eventually.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { scopedPostgres, type ScopedPostgres } from "../support/postgres.js";
import { parsePrometheus } from "../support/prometheus.js";
import { requireService } from "../support/services.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

let upstream: UpstreamProcess | undefined;
let pg: ScopedPostgres | undefined;
let store: RecordStore | undefined;
const gateways: GatewayProcess[] = [];

before(async () => {
  upstream = await startUpstreamProcess();
});
after(async () => {
  for (const gateway of gateways) await gateway.close();
  await store?.close();
  await pg?.drop();
  await upstream?.close();
});

const ask = { model: "demo-small", messages: [{ role: "user" as const, content: "hello there" }] };
const window = () => ({ from: new Date(Date.now() - 3_600_000), to: new Date(Date.now() + 3_600_000) });

function client(gateway: GatewayProcess, key: string): OpenAI {
  return new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: key, maxRetries: 0 });
}

test("two gateways on one PostgreSQL record every forwarded request once, with tokens and cost; refusals are not counted; SIGTERM flushes", { timeout: 120_000 }, async (t) => {
  const url = await requireService(t, "postgres");
  if (!url) return;
  pg = await scopedPostgres(url, "usage");
  store = await openRecordStore({ type: "postgres", url: pg.url });
  const { key, record } = await createApiKey(store, { principal: "alice", name: "laptop" });
  const config = {
    server: { auth: { provider_config: { type: "api_key" } } },
    upstream: { url: upstream!.url },
    storage: { type: "postgres", url: pg.url },
    pricing: { currency: "USD", models: { "demo-small": { input: 1000, output: 2000 } } },
  };
  const [first, second] = await Promise.all([startGateway({ config }), startGateway({ config })]);
  gateways.push(first!, second!);

  // JSON and streamed answers on both gateways, at once.
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 6; i++) calls.push(client(first!, key).chat.completions.create(ask));
  for (let i = 0; i < 4; i++) {
    calls.push(
      (async () => {
        const stream = await client(second!, key).chat.completions.create({ ...ask, stream: true });
        let usageSeen = false;
        for await (const chunk of stream) if (chunk.usage) usageSeen = true;
        // The client did not ask for usage: the chunk the gateway asked for is not shown.
        assert.equal(usageSeen, false);
      })(),
    );
  }
  await Promise.all(calls);
  // Refused before forwarding: a bad key (401), an undeclared route (404). Neither is counted.
  await assert.rejects(client(first!, "tg_" + "x".repeat(43)).chat.completions.create(ask), { status: 401 });
  const undeclared = await fetch(`${first!.url}/v1/no/such/route`, { method: "POST", headers: { authorization: `Bearer ${key}` } });
  assert.equal(undeclared.status, 404);
  // One more on the second gateway, then SIGTERM at once: it must still be written.
  await client(second!, key).chat.completions.create(ask);
  // The tokens are also in each gateway's metrics: 11 answers of 6 tokens (2 prompt, 4 completion).
  let tokens = 0;
  for (const gateway of [first!, second!]) {
    const metrics = parsePrometheus(await (await fetch(`${gateway.url}/metrics`)).text());
    tokens += metrics.value("tollgate_llm_tokens_total");
  }
  assert.equal(tokens, 66);
  assert.equal(await second!.stop("SIGTERM"), 0);

  const expected: UsageRow = { principal: "alice", key: record.id, model: "demo-small", upstream: "default", requests: 11, prompt_tokens: 22, completion_tokens: 44, cost: 0.11 };
  const rows = await eventually(
    () => store!.usage({ groupBy: ["principal", "key", "model", "upstream"], ...window() }),
    (r) => r.length === 1 && r[0]!.requests === 11,
    { timeoutMs: 5000 },
  );
  assert.equal(rows.length, 1);
  assert.deepEqual({ ...rows[0]!, cost: Math.round(rows[0]!.cost * 1e9) }, { ...expected, cost: 110_000_000 });

  // Still exact a moment later: nothing counted twice by either replica.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  assert.equal((await store.usage({ groupBy: [], ...window() }))[0]!.requests, 11);
});
