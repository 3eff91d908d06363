import type { SqliteDatabase } from "./sqlite-driver.js";

/**
 * The settings every Tollgate SQLite file is opened with (record store and
 * quota store), chosen so that a file that stops being writable is an error
 * the caller can answer with 503, never the end of the process.
 *
 * Why not WAL: in WAL mode SQLite keeps its index in `<file>-shm`, mapped
 * into memory. When that file is truncated, replaced, made immutable
 * (`chattr +i`) or cannot be allocated on a full disk, the next write through
 * the mapping is a SIGBUS: the process dies with no log line and no chance to
 * answer (reproduced on Linux with both drivers: test/core/stores/faults.test.ts).
 * A rollback journal (`TRUNCATE`: the journal file is emptied, not deleted,
 * after each commit) does all its I/O with read()/write(), whose failures
 * SQLite reports as SQLITE_FULL / SQLITE_IOERR / SQLITE_READONLY. Several
 * processes still share the file (file locks; the busy timeout makes a writer
 * wait its turn). `mmap_size = 0` keeps the database file itself out of
 * memory-mapped I/O for the same reason (it is 0 in most builds; said here so
 * a build with another default cannot bring the SIGBUS back).
 */
export const SQLITE_JOURNAL_MODE = "truncate";

export interface SqliteSettings {
  /** How long a statement waits for another process's lock before failing (ms). Blocks the thread: keep it short. */
  readonly busyTimeoutMs: number;
}

/**
 * Applies Tollgate's settings to a freshly opened file. A file another
 * process still holds in WAL mode (an older Tollgate) cannot leave it until
 * that process closes it: then the file stays in WAL for this process, and
 * `journalMode` in the result says so (the caller logs it).
 *
 * @example
 * const { journalMode } = applySqliteSettings(db, { busyTimeoutMs: 2000 });
 */
export function applySqliteSettings(db: SqliteDatabase, { busyTimeoutMs }: SqliteSettings): { journalMode: string } {
  // busy_timeout first: changing the journal mode needs a lock another process may hold.
  db.exec(`PRAGMA busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
  db.exec("PRAGMA mmap_size = 0");
  let journalMode: string;
  try {
    const row = db.prepare(`PRAGMA journal_mode = ${SQLITE_JOURNAL_MODE}`).get();
    journalMode = String(row?.journal_mode ?? "");
  } catch {
    // Locked by another process in WAL mode: keep going in the mode the file has.
    journalMode = String(db.prepare("PRAGMA journal_mode").get()?.journal_mode ?? "");
  }
  // NORMAL: a commit survives a process crash; only a power cut can lose the last ones.
  db.exec("PRAGMA synchronous = NORMAL");
  return { journalMode };
}
