import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

/**
 * Disks that fail on purpose, for SQLite fault tests: files made immutable
 * (`chattr +i`, which even root cannot write through) and a small tmpfs that
 * fills up. Both need root and the tools; without them the test skips saying
 * why, and under CI=true fails instead (CI must run them).
 */

/** True when faults can be made here; otherwise skips `t` (or throws under CI=true) and returns false. */
export function canMakeDiskFaults(t: TestContext, need: "chattr" | "mount"): boolean {
  let reason: string | undefined;
  if (process.platform !== "linux") reason = "disk faults need Linux";
  else if (process.getuid?.() !== 0) reason = `disk faults need root (${need})`;
  else if (spawnSync(need === "chattr" ? "chattr" : "mount", ["--help"], { stdio: "ignore" }).error) reason = `${need} is not installed`;
  if (reason === undefined) return true;
  if (process.env.CI === "true") throw new Error(`${reason}; under CI=true this fails the run`);
  t.skip(reason);
  console.error(`skipped: ${reason}`);
  return false;
}

/**
 * Makes every file in `dir` immutable (the database, its journal, any WAL
 * or shared-memory file); the returned function undoes it. Tests call the
 * undo in a `finally`, or the temporary folder could not be removed.
 */
export function makeImmutable(dir: string): () => void {
  const files = readdirSync(dir).map((name) => join(dir, name));
  if (files.length > 0) execFileSync("chattr", ["+i", ...files]);
  return () => {
    if (files.length > 0) execFileSync("chattr", ["-i", ...files], { stdio: "ignore" });
  };
}

export interface SmallDisk {
  readonly dir: string;
  /** Fills the disk to the last byte with a filler file. */
  fill(): void;
  /** Removes the filler: there is room again. */
  free(): void;
  /** Unmounts and removes the mount point. */
  close(): void;
}

/** A fresh tmpfs of `sizeKiB` KiB, mounted on a temporary folder. */
export function smallDisk(sizeKiB: number): SmallDisk {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-disk-"));
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeKiB}k`, "tmpfs", dir]);
  const filler = join(dir, "filler");
  return {
    dir,
    fill() {
      // Write 4 KiB blocks until the disk refuses one, then single bytes.
      for (const size of [4096, 1]) {
        const block = Buffer.alloc(size);
        try {
          for (;;) writeFileSync(filler, block, { flag: "a" });
        } catch {
          // full at this block size
        }
      }
    },
    free() {
      rmSync(filler, { force: true });
    },
    close() {
      try {
        execFileSync("umount", [dir], { stdio: "ignore" });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A temporary folder for a database (not a mount). */
export function tempFolder(): string {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-faults-"));
  mkdirSync(dir, { recursive: true });
  return dir;
}
