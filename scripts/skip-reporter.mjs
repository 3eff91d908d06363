// A node:test reporter that writes one JSON line per skipped test (its name,
// file and reason), so that scripts/test.mjs can count the skips and refuse
// the unexpected ones under CI=true. Used beside the spec reporter.
export default async function* skipReporter(source) {
  for await (const event of source) {
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    const { skip, name, file } = event.data;
    if (skip === undefined || skip === false) continue;
    yield `${JSON.stringify({ name, file, reason: typeof skip === "string" ? skip : "" })}\n`;
  }
}
