import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Config } from "../core/config/schema.js";
import { createFirstAdminKey } from "../core/keys.js";
import type { Logger } from "../core/log.js";
import type { RecordStore } from "../core/stores/types.js";

/**
 * The first admin key: with the `api_key` provider, `serve` creates one only
 * when the record store has never held a key (revoked and expired keys
 * count, so a restart after every key was revoked creates none), and of
 * several replicas starting at once on one store exactly one creates it
 * (`RecordStore.insertFirstApiKey`). It is shown once: a banner on stderr
 * (never a log line, so it does not reach log storage), or, with
 * `--admin-key-file F`, the key and a newline in F, mode 0600, written only
 * by the process that created it. An existing F is never overwritten: the
 * new key is revoked at once and start-up fails saying so.
 *
 * Called after the gateway listens, so that a start-up failure (port in use)
 * never swallows the only copy of a key.
 */
export async function issueFirstAdminKey(
  config: Config,
  store: RecordStore,
  { url, adminKeyFile, log }: { url: string; adminKeyFile?: string | undefined; log: Logger },
): Promise<void> {
  if (config.server.auth?.provider_config?.type !== "api_key") return;
  const created = await createFirstAdminKey(store);
  if (!created) {
    log.debug("the record store holds or held an API key: no first admin key created");
    return;
  }
  const { key, record } = created;
  if (adminKeyFile === undefined) {
    log.info({ id: record.id, principal: record.principal }, "created the first admin API key");
    process.stderr.write(adminKeyBanner(key, url));
    return;
  }
  const file = resolve(adminKeyFile);
  try {
    mkdirSync(dirname(file), { recursive: true });
    // wx: fails when the file exists, so a key from an earlier store is never replaced unseen.
    writeFileSync(file, `${key}\n`, { flag: "wx", mode: 0o600 });
  } catch (err) {
    await store.revokeApiKey(record.id, Date.now());
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new Error(
      `--admin-key-file ${file}: cannot write the first admin key (${code}; an existing file is never overwritten); ` +
        "the key was revoked: create one with `tollgate keys create --principal admin --attr roles=admin`",
    );
  }
  log.info({ id: record.id, principal: record.principal, file }, "created the first admin API key");
  process.stderr.write(`Tollgate created the first API key (principal "admin", roles admin) and wrote it to ${file} (mode 0600).\n`);
}

/**
 * Printed once to stderr: a plain banner, not a log line, so that it is not
 * shipped to log storage.
 */
export function adminKeyBanner(key: string, url: string): string {
  const reachable = url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:");
  return [
    "",
    'Tollgate created the first API key (principal "admin", roles admin). It is shown only this once:',
    "",
    `    ${key}`,
    "",
    "Try it:",
    `    curl -H "Authorization: Bearer ${key}" ${reachable}/v1/models`,
    "",
    "More keys: tollgate keys create --principal NAME [--attr roles=user]",
    "",
    "",
  ].join("\n");
}
