import { readdirSync, readFileSync } from "node:fs";
import { extname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The web console's files (src/console, copied into dist/console by the
 * build), read once and served from memory at `/console/...` without
 * credentials: they hold none. The page asks for an admin key and keeps it
 * in memory only (docs/console.md).
 */

/** Where the console's files are, beside this module's folder (src/console from the sources, dist/console once built). */
export const CONSOLE_DIR = fileURLToPath(new URL("../console/", import.meta.url));

const TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/**
 * Headers on every console file: no script, style or connection from
 * anywhere but the gateway itself (there is no CDN to allow), no framing
 * (clickjacking of the revoke button), no referrer.
 */
export const CONSOLE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache",
});

export interface ConsoleFile {
  readonly type: string;
  readonly body: Buffer;
}

/** The console's files by name (`index.html`, `app.js`, ...); empty when the folder is missing (a broken install says so in the 404). */
export function loadConsole(dir = CONSOLE_DIR): ReadonlyMap<string, ConsoleFile> {
  const files = new Map<string, ConsoleFile>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return files;
  }
  for (const name of names) {
    const type = TYPES[extname(name)];
    if (type) files.set(name, { type, body: readFileSync(join(dir, name)) });
  }
  return files;
}
