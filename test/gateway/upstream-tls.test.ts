import assert from "node:assert/strict";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { validateConfig } from "../../src/core/config/load.js";
import { ConfigError } from "../../src/core/errors.js";
import { createGateway, type Gateway } from "../../src/gateway/server.js";
import { captureLog } from "../support/log.js";
import { selfSignedCertificate, type TestCertificate } from "../support/tls.js";

// TLS settings per upstream (docs/upstreams.md): one HTTPS server with a
// self-signed certificate, reached as three upstreams — trusting its CA
// file, not verifying, and with the system's CAs (which do not know it).

describe("TLS per upstream", { timeout: 60_000 }, () => {
  let certificate: TestCertificate | undefined;
  let server: Server | undefined;
  let gateway: Gateway | undefined;
  let url: string;

  before(async () => {
    certificate = selfSignedCertificate();
    if (!certificate) return; // no openssl here: the tests below skip
    server = createServer({ cert: certificate.cert, key: certificate.key }, (req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ id: "chatcmpl-1", object: "chat.completion", choices: [] }));
    });
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
    const upstream = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const config = validateConfig({
      server: { port: 0, host: "127.0.0.1" },
      upstreams: [
        { name: "trusted", url: upstream, models: ["m-ca"], tls_cafile: certificate.certFile },
        { name: "unverified", url: upstream, models: ["m-noverify"], verify_tls: false },
        { name: "system-cas", url: upstream, models: ["m-strict"] },
      ],
    });
    gateway = await createGateway({ config, log: captureLog("silent").log });
    ({ url } = await gateway.listen());
  });

  after(async () => {
    await gateway?.close();
    server?.closeAllConnections();
    server?.close();
    certificate?.remove();
  });

  async function chat(model: string): Promise<number> {
    const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model, messages: [] }) });
    await res.arrayBuffer();
    return res.status;
  }

  test("an https upstream is reached with its tls_cafile, or with verify_tls false; with the system's CAs its self-signed certificate is refused (502)", async (t) => {
    if (!certificate) return t.skip("openssl is not available");
    assert.equal(await chat("m-ca"), 200);
    assert.equal(await chat("m-noverify"), 200);
    assert.equal(await chat("m-strict"), 502);
  });

  test("a tls_cafile that cannot be read is refused at start-up naming its upstream", async () => {
    const config = validateConfig({ upstreams: [{ name: "a", url: "https://127.0.0.1:1", models: ["*"] }, { name: "b", url: "https://127.0.0.1:1", models: ["m"], tls_cafile: "/nonexistent/ca.pem" }] });
    await assert.rejects(createGateway({ config, log: captureLog("silent").log, source: "test.yaml" }), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.issues, ["upstreams[1].tls_cafile: cannot read /nonexistent/ca.pem: ENOENT"]);
      return true;
    });
  });
});
