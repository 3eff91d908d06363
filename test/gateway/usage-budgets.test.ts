/**
 * Budgets in money end to end: a key's `{spend, period}` limit and a
 * principal's in `server.quota`, the demo upstream as a process, the
 * `openai` client. A request made once the spend has reached the budget is
 * refused 429 `budget_exceeded` and never reaches the upstream; a stream
 * admitted below the budget finishes whole and is charged.
 *
 * The demo upstream counts words: "hello there" is 2 prompt + 4 completion
 * tokens; at 1000 / 2000 per million, one request costs 0.01.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { createApiKey } from "../../src/core/keys.js";
import { openRecordStore } from "../../src/core/stores/index.js";
import { assertForwarded, assertNotForwarded, newTag } from "../support/forwarded.js";
import { startGateway, type GatewayProcess } from "../support/gateway.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

let upstream: UpstreamProcess;
let dir: string;
const gateways: GatewayProcess[] = [];

before(async () => {
  upstream = await startUpstreamProcess();
  dir = mkdtempSync(join(tmpdir(), "tollgate-budgets-"));
});
after(async () => {
  for (const gateway of gateways) await gateway.close();
  await upstream?.close();
  rmSync(dir, { recursive: true, force: true });
});

const ask = { model: "demo-small", messages: [{ role: "user" as const, content: "hello there" }] };
const pricing = { currency: "USD", models: { "demo-small": { input: 1000, output: 2000 } } };

async function gatewayWithKeys(name: string, quota: unknown, keys: { principal: string; limits?: unknown[] }[]) {
  const storage = { type: "sqlite", db_path: join(dir, `${name}.db`) };
  const store = await openRecordStore(storage as never);
  const secrets: string[] = [];
  try {
    for (const k of keys) secrets.push((await createApiKey(store, k)).key);
  } finally {
    await store.close();
  }
  const gateway = await startGateway({ config: { server: { auth: { provider_config: { type: "api_key" } }, ...(quota ? { quota } : {}) }, upstream: { url: upstream.url }, storage, pricing } });
  gateways.push(gateway);
  return { gateway, secrets };
}

function client(gateway: GatewayProcess, key: string, headers: Record<string, string> = {}): OpenAI {
  return new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: key, maxRetries: 0, defaultHeaders: headers });
}

test("a key's spend budget: a stream admitted below it finishes and is charged, the next request is 429 budget_exceeded and not forwarded", { timeout: 60_000 }, async () => {
  // No server.quota: the key's limits are counted in the embedded SQLite store.
  const { gateway, secrets } = await gatewayWithKeys("key-budget", undefined, [
    { principal: "alice", limits: [{ spend: 0.015, period: "month" }] },
    { principal: "alice" },
  ]);
  const [limited, other] = secrets as [string, string];
  await client(gateway, limited).chat.completions.create(ask);
  // 0.01 spent of 0.015: admitted; its 0.01 crosses the budget, and it is finished all the same.
  const stream = await client(gateway, limited).chat.completions.create({ ...ask, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, "You said: hello there");

  const refused = newTag();
  const err = await client(gateway, limited, refused.headers).chat.completions.create(ask).then(
    () => assert.fail("expected 429"),
    (e: unknown) => e as { status: number; error: { code: string; type: string; message: string } },
  );
  assert.equal(err.status, 429);
  assert.deepEqual({ code: err.error.code, type: err.error.type }, { code: "budget_exceeded", type: "rate_limit_error" });
  await assertNotForwarded(upstream, refused.tag);

  // The principal's other key has no budget of its own.
  const passed = newTag();
  await client(gateway, other, passed.headers).chat.completions.create(ask);
  await assertForwarded(upstream, passed.tag);
});

test("a principal's spend budget in server.quota refuses every key of that principal once reached, and no one else", { timeout: 60_000 }, async () => {
  const quota = { kvstore: { type: "sqlite", db_path: join(dir, "principal-quota.db") }, limits: [{ spend: 0.02, period: "day" }] };
  const { gateway, secrets } = await gatewayWithKeys("principal-budget", quota, [{ principal: "bob" }, { principal: "bob" }, { principal: "carol" }]);
  const [bob1, bob2, carol] = secrets as [string, string, string];
  await client(gateway, bob1).chat.completions.create(ask);
  await client(gateway, bob2).chat.completions.create(ask);
  await assert.rejects(client(gateway, bob1).chat.completions.create(ask), (e: { status?: number; error?: { code?: string } }) => e.status === 429 && e.error?.code === "budget_exceeded");
  await assert.rejects(client(gateway, bob2).chat.completions.create(ask), { status: 429 });
  await client(gateway, carol).chat.completions.create(ask);
});
