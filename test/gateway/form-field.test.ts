import assert from "node:assert/strict";
import { test } from "node:test";
import { withFormField, type BufferedBody } from "../../src/gateway/request-body.js";

/** A multipart body as fetch (undici) encodes a FormData, with its Content-Type. */
async function encoded(form: FormData): Promise<{ body: BufferedBody; contentType: string }> {
  const request = new Request("http://x.invalid/", { method: "POST", body: form });
  const bytes = Buffer.from(await request.arrayBuffer());
  return { body: { parts: [bytes], length: bytes.length, json: undefined, contentType: "multipart/form-data" }, contentType: request.headers.get("content-type")! };
}

/** What a server reads from `body`: every field, files by name and bytes. */
async function decoded(body: BufferedBody, contentType: string): Promise<[string, string][]> {
  const bytes = Buffer.concat(body.parts as Buffer[], body.length);
  assert.equal(bytes.length, body.length);
  const form = await new Response(bytes, { headers: { "content-type": contentType } }).formData();
  const out: [string, string][] = [];
  for (const [name, value] of form) out.push([name, typeof value === "string" ? value : `${value.name}:${Buffer.from(await value.arrayBuffer()).toString("hex")}`]);
  return out;
}

test("a form's model field is rewritten in place: every other part, a binary file's bytes included, reaches the server as it was", async () => {
  const form = new FormData();
  form.append("file", new Blob([Buffer.from([0, 13, 10, 45, 45, 255])]), "model.wav");
  form.append("model", "alias-of-whisper");
  form.append("language", "fr");
  const { body, contentType } = await encoded(form);
  const rewritten = withFormField(body, contentType, "model", "whisper-large-v3");
  assert.ok(rewritten);
  assert.deepEqual(await decoded(rewritten, contentType), [
    ["file", "model.wav:000d0a2d2dff"],
    ["model", "whisper-large-v3"],
    ["language", "fr"],
  ]);
});

test("a form it cannot rewrite unambiguously is left to the caller (undefined): no such field, twice, a file, or another spelling", async () => {
  const raw = (parts: string[], boundary = "b0undary") => {
    const bytes = Buffer.from(`${parts.map((p) => `--${boundary}\r\n${p}\r\n`).join("")}--${boundary}--\r\n`);
    return { parts: [bytes], length: bytes.length, json: undefined, contentType: "multipart/form-data" } as BufferedBody;
  };
  const ct = "multipart/form-data; boundary=b0undary";
  const model = (disposition: string, value = "alias") => `Content-Disposition: ${disposition}\r\n\r\n${value}`;
  // The plain case, by hand: rewritten.
  assert.ok(withFormField(raw([model('form-data; name="model"')]), ct, "model", "m"));
  assert.ok(withFormField(raw([model('form-data; name="model"')]), 'multipart/form-data; boundary="b0undary"', "model", "m"), "a quoted boundary");
  for (const [why, parts] of [
    ["no model field", [model('form-data; name="prompt"')]],
    ["the field twice", [model('form-data; name="model"'), model('form-data; name="model"')]],
    ["a file named model", [model('form-data; name="model"; filename="a.txt"')]],
    ["an unquoted second spelling", [model('form-data; name="model"'), model("form-data; name=model")]],
    ["an RFC 5987 spelling", [model("form-data; name*=utf-8''model")]],
  ] as const) {
    assert.equal(withFormField(raw([...parts]), ct, "model", "m"), undefined, why);
  }
  // A file whose name merely contains the field's name does not count as the field.
  assert.ok(withFormField(raw([model('form-data; name="file"; filename="model.wav"', "RIFF"), model('form-data; name="model"')]), ct, "model", "m"));
  // Not multipart, or no boundary.
  assert.equal(withFormField({ ...raw([model('form-data; name="model"')]), contentType: "application/json" }, ct, "model", "m"), undefined);
  assert.equal(withFormField(raw([model('form-data; name="model"')]), "multipart/form-data", "model", "m"), undefined);
});
