import { readFileSync, watch } from "node:fs";
import { dirname, resolve } from "node:path";
import type { RunningServer, ServeOptions } from "./start.js";

/**
 * SIGTERM / SIGINT drain and exit 0 (a second one exits at once). SIGHUP (and,
 * with `--watch-config`, a change of the file) reloads the config: an invalid
 * one is logged with its paths and the old one stays in force.
 */
export function handleSignals(running: RunningServer, opts: ServeOptions): void {
  const { log } = running;
  let stopping = false;
  let watcher: { close(): void } | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal during shutdown: exiting now");
      process.exit(1);
    }
    stopping = true;
    watcher?.close();
    log.info({ signal }, "shutting down: draining in-flight requests");
    running.close().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err: err instanceof Error ? err.message : String(err) }, "error during shutdown");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  // Reloads never overlap: a signal during a reload runs one more after it.
  let reloading: Promise<void> | undefined;
  let again = false;
  const reload = (trigger: string) => {
    if (stopping) return;
    if (reloading) {
      again = true;
      return;
    }
    reloading = running
      .reload()
      .then(
        () => log.info({ trigger }, "configuration reloaded"),
        (err: unknown) => log.error({ trigger, err: err instanceof Error ? err.message : String(err) }, "configuration reload refused; the previous configuration stays in force"),
      )
      .finally(() => {
        reloading = undefined;
        if (again) {
          again = false;
          reload(trigger);
        }
      });
  };
  process.on("SIGHUP", () => reload("SIGHUP"));
  if (opts.watchConfig && opts.config !== undefined) watcher = watchConfigFile(opts.config, () => reload("file change"));
}

/**
 * Calls `onChange` once a burst of changes to `file` has settled (editors
 * write a file in several steps, or replace it by a rename) and its content
 * differs from what it was. The folder is watched, and any change in it
 * counts, because the file is not always what changes: a Kubernetes
 * ConfigMap mounts `tollgate.yaml` as a symlink to `..data/tollgate.yaml`,
 * and the kubelet updates it by pointing the `..data` symlink at a new
 * timestamped folder (rename of `..data_tmp`), so only `..data` changes.
 * Comparing the content keeps other files in the folder (a SQLite database
 * beside the config) from causing reloads.
 */
export function watchConfigFile(file: string, onChange: () => void): { close(): void } {
  const settleMs = 200;
  let timer: NodeJS.Timeout | undefined;
  const path = resolve(file);
  // The folder the path names, not the symlink's target: the target folder is replaced on every update.
  const folder = dirname(path);
  const contentOf = (): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      return `unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
    }
  };
  let last = contentOf();
  const settled = () => {
    const now = contentOf();
    if (now === last) return;
    last = now;
    onChange();
  };
  const watcher = watch(folder, () => {
    clearTimeout(timer);
    timer = setTimeout(settled, settleMs);
  });
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
