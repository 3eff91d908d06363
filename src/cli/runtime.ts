/**
 * node:sqlite prints an ExperimentalWarning on the runtimes where it is still
 * flagged experimental. It says nothing a Tollgate user can act on, and it
 * lands in the middle of CLI output that scripts read, so the CLI drops that
 * one warning and keeps every other.
 */
export function quietSqliteWarning(): void {
  const original = process.emitWarning.bind(process);
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const text = typeof warning === "string" ? warning : warning.message;
    const type = typeof rest[0] === "string" ? rest[0] : (rest[0] as { type?: string } | undefined)?.type;
    const name = typeof warning === "string" ? type : warning.name;
    if (name === "ExperimentalWarning" && /SQLite/i.test(text)) return;
    (original as (...args: unknown[]) => void)(warning, ...rest);
  }) as typeof process.emitWarning;
}
