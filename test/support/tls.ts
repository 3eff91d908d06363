import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A self-signed certificate for 127.0.0.1, in a temporary folder. */
export interface TestCertificate {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
  /** Removes the folder. */
  remove(): void;
}

/**
 * Makes a one-day self-signed certificate for `IP:127.0.0.1` with openssl;
 * undefined when openssl is not installed (the TLS tests then skip, saying so).
 */
export function selfSignedCertificate(): TestCertificate | undefined {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-tls-"));
  const certFile = join(dir, "cert.pem");
  const keyFile = join(dir, "key.pem");
  const remove = () => rmSync(dir, { recursive: true, force: true });
  try {
    execFileSync(
      "openssl",
      [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", keyFile, "-out", certFile, "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
      ],
      { stdio: "ignore" },
    );
  } catch {
    remove();
    return undefined;
  }
  return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile), remove };
}
