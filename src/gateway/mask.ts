import { Transform, type Readable } from "node:stream";
import { createBrotliDecompress, createGunzip, createInflate } from "node:zlib";

/**
 * Keeps the gateway's own upstream credential (`upstream.api_key`) out of
 * what a client reads. Many servers repeat the credential they were given in
 * their error answers ("Incorrect API key provided: sk-..."): relayed as they
 * are, they would show every tenant the key the gateway holds for all of
 * them. An error answer is therefore read through a filter that replaces
 * each occurrence of the key with `*` of the same length (so a declared
 * `Content-Length` stays true); a compressed one is decompressed first and
 * sent uncompressed, and one in an encoding the gateway cannot read is not
 * relayed at all (the caller answers 502).
 */

/** Content codings the gateway can decompress to look inside an error answer. */
const DECODERS: Record<string, () => Transform> = {
  gzip: createGunzip,
  "x-gzip": createGunzip,
  deflate: createInflate,
  br: createBrotliDecompress,
};

/** An upstream answer's headers and body after masking; `undefined` when its encoding cannot be read. */
export interface MaskedAnswer {
  readonly headers: Record<string, string | string[]>;
  readonly body: Readable;
}

/**
 * Masks `secret` in an upstream answer's header values and body. `headers`
 * are the ones bound for the client (lower-case names); they are returned
 * changed, never modified in place. Returns undefined when the body is in a
 * content coding (or a chain of them) this module cannot decode.
 *
 * @example maskedAnswer({ "content-type": "application/json" }, upstream.body, "sk-upstream")
 */
export function maskedAnswer(headers: Record<string, string | string[]>, body: Readable, secret: string): MaskedAnswer | undefined {
  if (secret === "") return { headers, body };
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    out[name] = Array.isArray(value) ? value.map((v) => maskText(v, secret)) : maskText(value, secret);
  }
  const encoding = headerValue(out["content-encoding"])?.trim().toLowerCase();
  let source = body;
  if (encoding !== undefined && encoding !== "" && encoding !== "identity") {
    const decoder = DECODERS[encoding];
    if (!decoder) return undefined;
    const decoded = decoder();
    // A broken compressed stream ends the relay like any upstream failure.
    body.on("error", (err) => decoded.destroy(err));
    source = body.pipe(decoded);
    delete out["content-encoding"];
    delete out["content-length"];
  }
  const masked = maskStream(Buffer.from(secret, "utf8"));
  source.on("error", (err) => masked.destroy(err));
  return { headers: out, body: source.pipe(masked) };
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(",") : value;
}

function maskText(text: string, secret: string): string {
  return text.includes(secret) ? text.split(secret).join("*".repeat(secret.length)) : text;
}

/**
 * A byte stream with every occurrence of `secret` replaced by as many `*`.
 * The last `secret.length - 1` bytes of each chunk are held back until the
 * next one arrives, so an occurrence split across chunks is found too.
 */
function maskStream(secret: Buffer): Transform {
  const stars = Buffer.alloc(secret.length, "*");
  let held = Buffer.alloc(0);
  const mask = (data: Buffer) => {
    for (let at = data.indexOf(secret); at !== -1; at = data.indexOf(secret, at + secret.length)) stars.copy(data, at);
  };
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      const data = Buffer.concat([held, chunk]);
      mask(data);
      const keep = Math.min(secret.length - 1, data.length);
      held = Buffer.from(data.subarray(data.length - keep));
      done(null, data.subarray(0, data.length - keep));
    },
    flush(done) {
      done(null, held);
    },
  });
}
