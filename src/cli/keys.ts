import type { Command } from "commander";
import { defaultConfig, loadConfig } from "../core/config/load.js";
import type { StorageConfig } from "../core/config/schema.js";
import { API_KEY_PREFIX, ApiKeyInputError, apiKeyStatus, checkLimits, createApiKey, hashApiKey, parseAttributes, parseDuration, rotateApiKey } from "../core/keys.js";
import { openRecordStore } from "../core/stores/index.js";
import type { ApiKeyRecord, KeyLimit, RecordStore } from "../core/stores/types.js";

// This module imports the stores, keys and config only, never the providers:
// managing keys must work whatever state the gateway's code is in.

interface ConfigOption {
  config?: string;
}

/**
 * `tollgate keys create|list|rotate|revoke`: manage Tollgate's own API keys in the
 * record store of the config (`storage`), the same store `tollgate serve`
 * authenticates against.
 */
export function registerKeysCommands(program: Command): void {
  const keys = program
    .command("keys")
    .description("create, list, rotate and revoke Tollgate API keys (for the api_key auth provider)");

  keys
    .command("create")
    .description(
      "create a key; prints the key alone on stdout (details on stderr); it is never shown again",
    )
    .option("-c, --config <file>", "config file whose `storage` holds the keys (default: ./data/tollgate.db)")
    .requiredOption("-p, --principal <name>", "who the key authenticates as")
    .option(
      "-a, --attr <name=value>",
      "an attribute of the key's user, repeatable; `roles=a,b` is the same as `roles=a` `roles=b`",
      (pair: string, previous: string[] = []) => [...previous, pair],
    )
    .option("-e, --expires <duration>", "expire after this long: 45s, 15m, 12h, 30d, 2w (default: never)")
    .option("-n, --name <text>", "a name to tell the key by (shown by list and the admin API)")
    .option(
      "-l, --limit <kind=N/period>",
      "a limit of this key on top of its principal's quota, repeatable: requests=100/minute, tokens=100000/day, spend=25/month",
      (spec: string, previous: string[] = []) => [...previous, spec],
    )
    .action(async (opts: ConfigOption & { principal: string; attr?: string[]; expires?: string; name?: string; limit?: string[] }) => {
      // Validate every argument before touching the store.
      const now = Date.now();
      const attributes = parseAttributes(opts.attr ?? []);
      const expiresAt = opts.expires === undefined ? undefined : now + parseDuration(opts.expires);
      if (opts.principal.trim() === "") throw new Error("--principal must not be empty");
      if (opts.name !== undefined && opts.name.trim() === "") throw new Error("--name must not be empty");
      const limits = opts.limit === undefined ? undefined : parseLimitOptions(opts.limit);
      await withStore(opts, async (store) => {
        const { key, record } = await createApiKey(store, { principal: opts.principal, attributes, name: opts.name, limits, expiresAt, now });
        // The key alone on stdout, so `KEY=$(tollgate keys create ...)` captures exactly it.
        process.stdout.write(`${key}\n`);
        process.stderr.write(
          [
            `created API key ${record.id} (store this key now: it is not shown again)`,
            `  principal:  ${record.principal}`,
            ...(record.name === undefined ? [] : [`  name:       ${record.name}`]),
            `  attributes: ${formatAttributes(record.attributes) || "(none)"}`,
            ...(record.limits === undefined ? [] : [`  limits:     ${record.limits.map(limitText).join(", ")}`]),
            `  expires:    ${record.expiresAt === undefined ? "never" : isoTime(record.expiresAt)}`,
          ].join("\n") + "\n",
        );
      });
    });

  keys
    .command("list")
    .description("list every key (never the key or its hash) with its status: active, revoked or expired")
    .option("-c, --config <file>", "config file whose `storage` holds the keys (default: ./data/tollgate.db)")
    .option("--json", "print a JSON array instead of a table")
    .action(async (opts: ConfigOption & { json?: boolean }) => {
      await withStore(opts, async (store) => {
        const records = await store.listApiKeys();
        const now = Date.now();
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(records.map((r) => toJson(r, now)), null, 2)}\n`);
        } else if (records.length === 0) {
          process.stderr.write("no API keys yet; create one with `tollgate keys create --principal NAME`\n");
        } else {
          process.stdout.write(formatTable(records, now));
        }
      });
    });

  keys
    .command("revoke")
    .description("revoke a key by its id (key_...) or the full key; a running gateway refuses it within a second")
    .option("-c, --config <file>", "config file whose `storage` holds the keys (default: ./data/tollgate.db)")
    .argument("<id-or-key>", "the key's id as `keys list` shows it, or the key itself")
    .action(async (idOrKey: string, opts: ConfigOption) => {
      // A full key is looked up by its hash; the store is never given the key.
      const ref = idOrKey.startsWith(API_KEY_PREFIX) ? hashApiKey(idOrKey) : idOrKey;
      await withStore(opts, async (store) => {
        const at = Date.now();
        const record = await store.revokeApiKey(ref, at);
        if (!record) throw new Error("no such key");
        const earlier = record.revokedAt !== undefined && record.revokedAt < at;
        process.stdout.write(
          earlier
            ? `API key ${record.id} (principal ${record.principal}) was already revoked at ${isoTime(record.revokedAt!)}\n`
            : `revoked API key ${record.id} (principal ${record.principal})\n`,
        );
      });
    });

  keys
    .command("rotate")
    .description(
      "give a key a new secret, keeping its id, principal, attributes and expiry; prints the new key alone on stdout " +
        "(details on stderr); the old secret keeps working for --grace, then stops",
    )
    .option("-c, --config <file>", "config file whose `storage` holds the keys (default: ./data/tollgate.db)")
    .option("-g, --grace <duration>", "how long the old secret keeps working: 45s, 15m, 12h, 30d, 2w (default: it stops at once)")
    .argument("<id>", "the key's id as `keys list` shows it")
    .action(async (id: string, opts: ConfigOption & { grace?: string }) => {
      const graceMs = opts.grace === undefined ? 0 : parseDuration(opts.grace);
      await withStore(opts, async (store) => {
        const now = Date.now();
        const { key, record } = await rotateApiKey(store, id, { graceMs, now });
        process.stdout.write(`${key}\n`);
        process.stderr.write(
          [
            `rotated API key ${record.id} (principal ${record.principal}); store the new key now: it is not shown again`,
            graceMs > 0
              ? `  the old key keeps working until ${isoTime(now + graceMs)}`
              : "  the old key stops working now (a running gateway refuses it within a second)",
          ].join("\n") + "\n",
        );
      });
    });
}

function storageOf(opts: ConfigOption): StorageConfig {
  return (opts.config === undefined ? defaultConfig() : loadConfig(opts.config)).storage;
}

async function withStore(opts: ConfigOption, work: (store: RecordStore) => Promise<void>): Promise<void> {
  const store = await openRecordStore(storageOf(opts));
  try {
    await work(store);
  } finally {
    await store.close();
  }
}

function isoTime(ms: number): string {
  return new Date(ms).toISOString();
}

function formatAttributes(attributes: ApiKeyRecord["attributes"]): string {
  return Object.entries(attributes)
    .map(([name, values]) => `${name}=${values.join(",")}`)
    .join(" ");
}

/** `--limit` options (`spend=25/month`) as per-key limits, checked as the admin API checks them; throws naming the option. */
function parseLimitOptions(specs: readonly string[]): KeyLimit[] {
  const limits = specs.map((spec) => {
    const match = /^\s*(requests|tokens|spend)\s*=\s*([^/\s]+)\s*\/\s*([a-z]+)\s*$/.exec(spec);
    if (!match) throw new Error(`--limit ${spec}: expected KIND=N/PERIOD, KIND one of requests, tokens, spend (e.g. spend=25/month)`);
    const amount = Number(match[2]);
    if (!Number.isFinite(amount)) throw new Error(`--limit ${spec}: ${match[2]} is not a number`);
    return { [match[1]!]: amount, period: match[3] };
  });
  try {
    return checkLimits(limits);
  } catch (err) {
    // `limits[1].period: ...` names the second --limit.
    const index = err instanceof ApiKeyInputError ? /^limits\[(\d+)\]/.exec(err.param)?.[1] : undefined;
    if (index === undefined) throw err;
    throw new Error(`--limit ${specs[Number(index)]}: ${err instanceof Error ? err.message.replace(/^limits\[\d+\]\S*:\s*/, "") : String(err)}`);
  }
}

/** A limit as `--limit` writes it: `spend=25/month`. */
function limitText(limit: KeyLimit): string {
  const [kind, value] = Object.entries(limit).find(([name]) => name !== "period")!;
  return `${kind}=${value}/${limit.period}`;
}

function toJson(record: ApiKeyRecord, now: number) {
  return {
    id: record.id,
    prefix: record.prefix,
    principal: record.principal,
    name: record.name ?? null,
    attributes: record.attributes,
    limits: record.limits ?? [],
    created_at: isoTime(record.createdAt),
    expires_at: record.expiresAt === undefined ? null : isoTime(record.expiresAt),
    revoked_at: record.revokedAt === undefined ? null : isoTime(record.revokedAt),
    status: apiKeyStatus(record, now),
  };
}

function formatTable(records: readonly ApiKeyRecord[], now: number): string {
  const header = ["ID", "PREFIX", "PRINCIPAL", "ATTRIBUTES", "CREATED", "EXPIRES", "STATUS"];
  const rows = records.map((r) => [
    r.id,
    r.prefix,
    r.principal,
    formatAttributes(r.attributes) || "-",
    isoTime(r.createdAt),
    r.expiresAt === undefined ? "never" : isoTime(r.expiresAt),
    apiKeyStatus(r, now),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  return [header, ...rows]
    .map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  "))
    .join("\n") + "\n";
}
