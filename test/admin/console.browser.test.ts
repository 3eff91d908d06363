import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { REPO, startGateway, type GatewayProcess } from "../support/gateway.js";
import { eventually } from "../support/eventually.js";
import { startUpstreamProcess, type UpstreamProcess } from "../support/upstream.js";

// The console in a real browser: Debian's chromium (scripts/install-chromium.sh)
// driven by playwright-core. Sign in with the first admin key, create a key,
// use it with the openai client against the gateway, see its requests in the
// usage chart, revoke it and see the client get 401. A screenshot of each
// page goes to a folder printed below (TOLLGATE_SCREENSHOTS_DIR, else a
// temporary one); TOLLGATE_UPDATE_SCREENSHOTS=1 also copies them to
// docs/console/, where docs/console.md shows them.

const CHROMIUM = "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

describe("the web console in chromium", { timeout: 180_000 }, () => {
  let upstream: UpstreamProcess;
  let gateway: GatewayProcess;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  let adminKey: string;
  const shots = process.env.TOLLGATE_SCREENSHOTS_DIR ?? mkdtempSync(join(tmpdir(), "tollgate-console-shots-"));

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/install-chromium.sh (apt-get install chromium)`);
    mkdirSync(shots, { recursive: true });
    console.log(`console screenshots: ${shots}`);
    upstream = await startUpstreamProcess();
    gateway = await startGateway({
      config: {
        server: { auth: { provider_config: { type: "api_key" } } },
        upstream: { url: upstream.url },
        storage: { type: "sqlite", db_path: "./tollgate.db" },
        // Priced, so that the chart's cost total is the recorder's, not a zero.
        pricing: { currency: "USD", models: { "*": { input: 2500, output: 10000 } } },
      },
      args: ["--admin-key-file", "admin.key"],
    });
    adminKey = readFileSync(join(gateway.dir, "admin.key"), "utf8").trim();
    // A fresh profile each run: nothing remembered between runs, nothing shared with another browser.
    profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1280, height: 800 } });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("dialog", (dialog) => void (dialog.type() === "prompt" ? dialog.accept("") : dialog.accept()));
  });
  after(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await gateway?.close();
    await upstream?.close();
  });

  async function shot(name: string): Promise<void> {
    const file = join(shots, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    if (process.env.TOLLGATE_UPDATE_SCREENSHOTS === "1") {
      mkdirSync(join(REPO, "docs/console"), { recursive: true });
      copyFileSync(file, join(REPO, "docs/console", `${name}.png`));
    }
  }

  const openai = (apiKey: string) => new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey, maxRetries: 0 });
  const ask = (client: OpenAI) => client.chat.completions.create({ model: "demo-model", messages: [{ role: "user", content: "say three words" }] });

  test("sign in, create a key, use it, see its usage, revoke it, and the client gets 401", async () => {
    await page.goto(`${gateway.url}/console`);
    assert.equal(new URL(page.url()).pathname, "/console/");
    await shot("sign-in");
    await page.fill("#admin-key", adminKey);
    await page.click("#sign-in");
    await page.waitForSelector("#page-keys:not([hidden])");
    // The key is in the page's memory only: no cookie, nothing in storage.
    assert.deepEqual(await context.cookies(), []);
    assert.equal(await page.evaluate("localStorage.length + sessionStorage.length"), 0);

    await page.fill("#create-principal", "browser-user");
    await page.fill("#create-attributes", "roles=user");
    await page.click("#create-submit");
    await page.waitForSelector("#secret-panel:not([hidden])");
    const secret = (await page.textContent("#new-secret"))!.trim();
    assert.match(secret, /^tg_[A-Za-z0-9_-]{43}$/);
    const row = page.locator("#keys-table tbody tr", { hasText: "browser-user" });
    await row.waitFor();
    const keyId = await row.getAttribute("data-key-id");
    assert.match(keyId ?? "", /^key_/);
    await shot("keys");

    const client = openai(secret);
    let promptTokens = 0;
    let completionTokens = 0;
    for (let i = 0; i < 3; i++) {
      const answer = await ask(client);
      assert.ok(answer.choices[0]?.message.content);
      promptTokens += answer.usage?.prompt_tokens ?? 0;
      completionTokens += answer.usage?.completion_tokens ?? 0;
    }
    await page.click("#nav button[data-page=usage]");
    // Shown once: leaving the page forgot the secret.
    assert.equal(await page.locator("#new-secret").textContent(), "");
    // Usage is written at most 1 s behind: refresh until the chart shows the three requests.
    await eventually(
      async () => {
        await page.click("#usage-refresh");
        await page.waitForSelector("#chart-principal svg");
        const bar = page.locator('#chart-principal g.bar[data-label="browser-user"]');
        return (await bar.count()) === 0 ? null : await bar.getAttribute("data-requests");
      },
      (requests) => requests === "3",
      { timeoutMs: 10_000, intervalMs: 300 },
    );
    assert.equal(await page.locator('#chart-model g.bar[data-label="demo-model"]').getAttribute("data-requests"), "3");
    assert.equal(Number(await page.textContent("#total-prompt")), promptTokens, "the prompt tokens the client was told");
    assert.equal(Number(await page.textContent("#total-completion")), completionTokens, "the completion tokens the client was told");
    const cost = (promptTokens * 2500 + completionTokens * 10000) / 1e6;
    assert.equal(Number(await page.textContent("#total-cost")), Math.round(cost * 10000) / 10000, "the cost priced from the recorded tokens");
    await shot("usage");

    await page.click("#nav button[data-page=policy]");
    await page.fill("#policy-principal", "browser-user");
    await page.fill("#policy-attributes", "roles=user");
    await page.fill("#policy-resource", "model::demo-model");
    await page.click("#policy-submit");
    await page.waitForSelector("#policy-decision");
    assert.match((await page.textContent("#policy-decision"))!, /^ALLOW at access_policy/);
    await shot("policy");

    await page.click("#nav button[data-page=config]");
    await page.locator("#config-text", { hasText: '"upstream"' }).waitFor();
    await shot("config");

    await page.click("#nav button[data-page=health]");
    await page.locator("#ready-text", { hasText: /^200/ }).waitFor();
    await shot("health");

    await page.click("#nav button[data-page=keys]");
    await page.locator(`#keys-table tbody tr[data-key-id="${keyId}"] button.revoke`).click();
    await page.waitForSelector(`#keys-table tbody tr[data-key-id="${keyId}"][data-status="revoked"]`);
    await shot("keys-revoked");
    // Revocation reaches the gateway's key cache within a second.
    await eventually(
      () => ask(client).then(() => 200, (err: unknown) => (err instanceof OpenAI.APIError ? err.status : String(err))),
      (status) => status === 401,
      { timeoutMs: 3000 },
    );
  });
});
