import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { ConfigError } from "../errors.js";
import type { Config } from "./schema.js";

/**
 * The files a config names, in one table: where each sits in the config, and
 * whether it must already exist (a certificate) or is created on demand (a
 * SQLite database). `resolveConfigPaths` makes each relative one absolute
 * against the config file's folder; `checkConfigFiles` reads each that must
 * exist, for `tollgate config validate` and `tollgate serve` alike. A new key
 * that holds a file path belongs here.
 */
interface FileKey {
  /** Where the path sits, as `formatPath` writes it. */
  readonly path: string;
  /** The file named, or undefined when the config does not name one there. */
  get(config: Config): string | undefined;
  /** A copy of `config` naming `file` there instead. */
  set(config: Config, file: string): Config;
  /** True when the gateway reads it at start (so it must exist); false when it creates it. */
  readonly mustExist: boolean;
}

const FILE_KEYS: readonly FileKey[] = [
  {
    path: "storage.db_path",
    mustExist: false,
    get: (c) => (c.storage.type === "sqlite" ? c.storage.db_path : undefined),
    set: (c, file) => ({ ...c, storage: { ...c.storage, db_path: file } as Config["storage"] }),
  },
  {
    path: "server.quota.kvstore.db_path",
    mustExist: false,
    get: (c) => (c.server.quota?.kvstore.type === "sqlite" ? c.server.quota.kvstore.db_path : undefined),
    set: (c, file) => ({
      ...c,
      server: { ...c.server, quota: { ...c.server.quota!, kvstore: { ...c.server.quota!.kvstore, db_path: file } as never } },
    }),
  },
  {
    path: "server.tls.cert_file",
    mustExist: true,
    get: (c) => c.server.tls?.cert_file,
    set: (c, file) => ({ ...c, server: { ...c.server, tls: { ...c.server.tls!, cert_file: file } } }),
  },
  {
    path: "server.tls.key_file",
    mustExist: true,
    get: (c) => c.server.tls?.key_file,
    set: (c, file) => ({ ...c, server: { ...c.server, tls: { ...c.server.tls!, key_file: file } } }),
  },
  {
    path: "server.auth.provider_config.tls_cafile",
    mustExist: true,
    get: (c) => {
      const provider = c.server.auth?.provider_config;
      return provider && "tls_cafile" in provider ? provider.tls_cafile : undefined;
    },
    set: (c, file) => ({
      ...c,
      server: { ...c.server, auth: { ...c.server.auth!, provider_config: { ...c.server.auth!.provider_config, tls_cafile: file } as never } },
    }),
  },
];

/** The CA files of the upstreams: `upstream.tls_cafile`, or each of `upstreams[i].tls_cafile`. */
function upstreamCaFiles(config: Config): FileKey[] {
  const single: FileKey = {
    path: "upstream.tls_cafile",
    mustExist: true,
    get: (c) => c.upstream?.tls_cafile,
    set: (c, file) => ({ ...c, upstream: { ...c.upstream!, tls_cafile: file } }),
  };
  const each = (config.upstreams ?? []).map(
    (_, i): FileKey => ({
      path: `upstreams[${i}].tls_cafile`,
      mustExist: true,
      get: (c) => c.upstreams?.[i]?.tls_cafile,
      set: (c, file) => ({ ...c, upstreams: c.upstreams!.map((u, j) => (j === i ? { ...u, tls_cafile: file } : u)) }),
    }),
  );
  return [single, ...each];
}

/** Every file key of `config`: the fixed ones and one per upstream. */
function fileKeys(config: Config): readonly FileKey[] {
  return [...FILE_KEYS, ...upstreamCaFiles(config)];
}

/** SQLite's name for a database in memory: not a file. */
const IN_MEMORY = ":memory:";

/**
 * `config` with every relative file path made absolute against `folder` (the
 * config file's folder), so that `tollgate keys create --config
 * /etc/tollgate/tollgate.yaml` run from any directory opens the database
 * `serve` uses.
 */
export function resolveConfigPaths(config: Config, folder: string): Config {
  let out = config;
  for (const key of fileKeys(config)) {
    const file = key.get(out);
    if (file === undefined || file === IN_MEMORY || isAbsolute(file)) continue;
    out = key.set(out, resolve(folder, file));
  }
  return out;
}

/**
 * Reads every file the config names that the gateway needs at start (TLS
 * certificate and key, CA files). Throws a {@link ConfigError} from `source`
 * with one issue per unreadable file: `server.tls.cert_file: cannot read
 * /etc/tls/cert.pem: ENOENT`.
 */
export function checkConfigFiles(config: Config, source: string): void {
  const issues: string[] = [];
  for (const key of fileKeys(config)) {
    const file = key.get(config);
    if (!key.mustExist || file === undefined) continue;
    try {
      readFileSync(file);
    } catch (err) {
      issues.push(`${key.path}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  if (issues.length > 0) throw new ConfigError(source, issues);
}
