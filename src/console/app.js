// The Tollgate console: plain DOM code, no framework and nothing fetched but
// this gateway's own admin API (docs/console.md). The admin key lives in the
// `adminKey` variable below and nowhere else: no cookie, no storage, gone
// when the tab closes or on "Sign out".

let adminKey = "";
let keysAfter = null;

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

/** A call to the admin API; refusals become an Error with the envelope's message. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${adminKey}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store" });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(data?.error?.message ?? `HTTP ${res.status}`);
    err.status = res.status;
    if (data?.error?.param) err.message += ` (${data.error.param})`;
    throw err;
  }
  return data;
}

function say(text, kind = "info") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

/** Runs an action, showing its failure; a refused credential signs out. */
async function attempt(action) {
  try {
    say("");
    await action();
  } catch (err) {
    if (err.status === 401) signOut("Your key was refused; sign in again.");
    else say(err.message, "error");
  }
}

function show(page) {
  // A secret is shown once: leaving the page forgets it.
  hideSecret();
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `page-${page}`;
  for (const button of document.querySelectorAll("#nav button[data-page]")) button.classList.toggle("current", button.dataset.page === page);
  const load = { keys: loadKeys, usage: loadUsage, config: loadConfig, health: loadHealth }[page];
  if (load) void attempt(load);
}

function signOut(reason) {
  adminKey = "";
  $("admin-key").value = "";
  $("nav").hidden = true;
  $("keys-table").tBodies[0].replaceChildren();
  show("sign-in");
  if (reason) say(reason, "error");
}

/** `roles=a,b teams=ml` or `roles=a,b; teams=ml` → {roles: [a, b], teams: [ml]}. */
function parseAttributes(text) {
  const out = {};
  for (const pair of text.split(/[;\s]+/).filter(Boolean)) {
    const eq = pair.indexOf("=");
    if (eq < 1) throw new Error(`attribute ${JSON.stringify(pair)}: expected name=value`);
    const name = pair.slice(0, eq);
    out[name] = [...(out[name] ?? []), ...pair.slice(eq + 1).split(",").filter(Boolean)];
  }
  return out;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

const day = (iso) => (iso ? iso.slice(0, 16).replace("T", " ") : "never");
const attributesText = (attributes) => Object.entries(attributes).map(([k, v]) => `${k}=${v.join(",")}`).join(" ");

function keyRow(key) {
  const tr = document.createElement("tr");
  tr.dataset.keyId = key.id;
  tr.dataset.status = key.status;
  tr.append(cell(key.id), cell(key.name ?? ""), cell(key.principal), cell(attributesText(key.attributes)), cell(key.status), cell(day(key.created_at)), cell(day(key.expires_at)));
  const actions = document.createElement("td");
  if (key.status === "active") {
    actions.append(
      button("Rotate", () => attempt(async () => {
        const grace = prompt(`Rotate ${key.id}: how long may the old secret keep working? (e.g. 1h; empty: not at all)`, "");
        if (grace === null) return;
        const rotated = await api("POST", `/admin/v1/keys/${encodeURIComponent(key.id)}/rotate`, grace ? { grace } : {});
        showSecret(`New secret for ${rotated.id}`, rotated.key);
        await loadKeys();
      }), "rotate"),
      button("Revoke", () => attempt(async () => {
        if (!confirm(`Revoke ${key.id} (${key.principal})? Clients using it are refused within a second.`)) return;
        await api("DELETE", `/admin/v1/keys/${encodeURIComponent(key.id)}`);
        say(`Revoked ${key.id}.`);
        await loadKeys();
      }), "revoke"),
    );
  }
  tr.append(actions);
  return tr;
}

async function loadKeys(more = false) {
  const params = new URLSearchParams({ limit: "50" });
  const principal = $("filter-principal").value.trim();
  if (principal) params.set("principal", principal);
  if (more && keysAfter) params.set("after", keysAfter);
  const page = await api("GET", `/admin/v1/keys?${params}`);
  const body = $("keys-table").tBodies[0];
  if (!more) body.replaceChildren();
  body.append(...page.data.map(keyRow));
  keysAfter = page.data.length ? page.data[page.data.length - 1].id : null;
  $("keys-more").hidden = !page.has_more;
}

function hideSecret() {
  $("new-secret").textContent = "";
  $("secret-panel").hidden = true;
}

function showSecret(title, secret) {
  $("secret-title").textContent = title;
  $("new-secret").textContent = secret;
  $("secret-panel").hidden = false;
}

async function createKey() {
  const body = { principal: $("create-principal").value.trim() };
  const name = $("create-name").value.trim();
  const attributes = $("create-attributes").value.trim();
  const expires = $("create-expires").value.trim();
  if (name) body.name = name;
  if (attributes) body.attributes = parseAttributes(attributes);
  if (expires) body.expires_in = expires;
  const created = await api("POST", "/admin/v1/keys", body);
  showSecret(`New key ${created.id} for ${created.principal}`, created.key);
  $("create-form").reset();
  await loadKeys();
}

// ---- usage ----------------------------------------------------------------

const money = (n) => (Math.round(n * 10000) / 10000).toString();

function usageQuery(groupBy) {
  const days = Number($("usage-window").value);
  const to = new Date();
  const from = new Date(to.getTime() - days * 24 * 3600 * 1000);
  const params = new URLSearchParams({ group_by: groupBy, from: from.toISOString(), to: to.toISOString() });
  const principal = $("usage-principal").value.trim();
  if (principal) params.set("principal", principal);
  return api("GET", `/admin/v1/usage?${params}`);
}

/** A horizontal bar per row: label, a bar sized by requests, requests and cost. Inline SVG, no library. */
function barChart(target, rows, labelOf) {
  const width = 520;
  const bar = 22;
  const labelWidth = 170;
  const max = Math.max(1, ...rows.map((r) => r.requests));
  const svg = document.createElementNS(SVG, "svg");
  const height = Math.max(1, rows.length) * (bar + 6) + 4;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  if (rows.length === 0) {
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", "4");
    text.setAttribute("y", "16");
    text.textContent = "no requests in this window";
    svg.append(text);
  }
  rows.forEach((row, i) => {
    const y = 4 + i * (bar + 6);
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "bar");
    g.dataset.label = labelOf(row);
    g.dataset.requests = String(row.requests);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "0");
    label.setAttribute("y", String(y + 15));
    label.textContent = labelOf(row).slice(0, 24);
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", String(labelWidth));
    rect.setAttribute("y", String(y));
    rect.setAttribute("height", String(bar));
    rect.setAttribute("width", String(Math.max(2, ((width - labelWidth - 150) * row.requests) / max)));
    const value = document.createElementNS(SVG, "text");
    value.setAttribute("x", String(width - 146));
    value.setAttribute("y", String(y + 15));
    value.textContent = `${row.requests} req · ${money(row.cost)}`;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${labelOf(row)}: ${row.requests} requests, ${row.prompt_tokens} prompt + ${row.completion_tokens} completion tokens, cost ${money(row.cost)}`;
    g.append(title, label, rect, value);
    svg.append(g);
  });
  target.replaceChildren(svg);
}

async function loadUsage() {
  const [byDay, byModel, byPrincipal] = await Promise.all([usageQuery("day"), usageQuery("model"), usageQuery("principal")]);
  const sum = (field) => byPrincipal.data.reduce((n, r) => n + r[field], 0);
  const totals = $("usage-totals");
  totals.replaceChildren();
  for (const [label, value, id] of [
    ["Requests", sum("requests"), "total-requests"],
    ["Prompt tokens", sum("prompt_tokens"), "total-prompt"],
    ["Completion tokens", sum("completion_tokens"), "total-completion"],
    ["Cost", money(sum("cost")), "total-cost"],
  ]) {
    const box = document.createElement("div");
    const strong = document.createElement("strong");
    strong.id = id;
    strong.textContent = String(value);
    box.append(strong, document.createTextNode(` ${label}`));
    totals.append(box);
  }
  barChart($("chart-day"), [...byDay.data].sort((a, b) => (a.day < b.day ? -1 : 1)), (r) => r.day);
  barChart($("chart-model"), [...byModel.data].sort((a, b) => b.requests - a.requests), (r) => r.model ?? "(none)");
  barChart($("chart-principal"), [...byPrincipal.data].sort((a, b) => b.requests - a.requests), (r) => r.principal);
}

// ---- policy, config, health ----------------------------------------------

async function checkPolicy() {
  const form = document.querySelector("input[name=policy-form]:checked").value;
  const body = { principal: $("policy-principal").value.trim(), attributes: parseAttributes($("policy-attributes").value.trim()) };
  if (form === "route") {
    body.method = $("policy-method").value;
    body.path = $("policy-path").value.trim();
  } else {
    body.action = $("policy-action").value;
    body.resource = $("policy-resource").value.trim();
    const owner = $("policy-owner").value.trim();
    if (owner) body.owner = owner;
  }
  const answer = await api("POST", "/admin/v1/policy/check", body);
  const out = $("policy-result");
  out.replaceChildren();
  const verdict = document.createElement("p");
  verdict.id = "policy-decision";
  verdict.className = answer.decision;
  verdict.textContent = `${answer.decision.toUpperCase()} at ${answer.stage}${answer.rule ? `, rule ${answer.rule.index}: ${answer.rule.description}` : ", no rule"}`;
  const detail = document.createElement("p");
  detail.textContent = answer.explanation;
  out.append(verdict, detail);
}

async function loadConfig() {
  $("config-text").textContent = JSON.stringify(await api("GET", "/admin/v1/config"), null, 2);
}

async function loadHealth() {
  for (const [path, id] of [["/health", "health-text"], ["/ready", "ready-text"]]) {
    const res = await fetch(path, { cache: "no-store", credentials: "omit" });
    $(id).textContent = `${res.status}\n${JSON.stringify(await res.json().catch(() => null), null, 2)}`;
  }
}

// ---- wiring -----------------------------------------------------------------

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  adminKey = $("admin-key").value.trim();
  $("admin-key").value = "";
  void attempt(async () => {
    await api("GET", "/admin/v1/keys?limit=1");
    $("nav").hidden = false;
    show("keys");
  });
});
$("sign-out").addEventListener("click", () => signOut());
for (const b of document.querySelectorAll("#nav button[data-page]")) b.addEventListener("click", () => show(b.dataset.page));
$("create-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void attempt(createKey);
});
$("filter-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void attempt(() => loadKeys());
});
$("keys-more").addEventListener("click", () => attempt(() => loadKeys(true)));
$("copy-secret").addEventListener("click", () =>
  attempt(async () => {
    await navigator.clipboard.writeText($("new-secret").textContent);
    say("Copied.");
  }),
);
$("hide-secret").addEventListener("click", hideSecret);
$("usage-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void attempt(loadUsage);
});
$("policy-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void attempt(checkPolicy);
});
$("health-refresh").addEventListener("click", () => attempt(loadHealth));
show("sign-in");
