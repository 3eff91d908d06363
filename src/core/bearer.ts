import { AuthError } from "./errors.js";

/** Longest bearer credential accepted, in bytes; longer ones are refused before any provider sees them. */
export const MAX_CREDENTIAL_BYTES = 8192;

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

// The reference's exact message: a Llama Stack client may compare it. What
// was wrong goes to the challenge's error_description and the log instead.
const FORMAT = "Invalid Authorization header format";

function malformed(detail: string): AuthError {
  return new AuthError("invalid_request", FORMAT, detail);
}

/**
 * Extracts the bearer credential from the `Authorization` header value(s).
 * Returns `undefined` when no header was sent, or one empty header (the caller
 * decides what that means for the configured provider). Throws a 401 {@link AuthError} for
 * anything that is not exactly one well-formed bearer credential: another
 * scheme, an empty credential, two credentials (in one header or in two
 * headers), one too long, or characters outside RFC 6750's b64token.
 * The scheme is case-insensitive (RFC 7235 §2.1). The token is never part of
 * an error message.
 */
export function parseBearer(
  header: string | readonly string[] | undefined,
  maxBytes: number = MAX_CREDENTIAL_BYTES,
): string | undefined {
  if (header === undefined) return undefined;
  if (typeof header !== "string") {
    if (header.length === 0) return undefined;
    if (header.length > 1) throw malformed(`exactly one Authorization header is allowed`);
    header = header[0]!;
  }
  const value = header.trim();
  // An empty header carries no credential: as in the reference, the caller
  // gets the provider's "Authentication required" message, and RFC 6750 §3.1
  // says such a challenge carries no error code.
  if (value === "") return undefined;
  const space = value.search(/[ \t]/);
  const scheme = space === -1 ? value : value.slice(0, space);
  if (scheme.toLowerCase() !== "bearer") throw malformed(`expected 'Bearer <token>'`);
  const credential = space === -1 ? "" : value.slice(space).trim();
  if (credential === "") throw malformed(`empty bearer token`);
  if (/[ \t,]/.test(credential)) throw malformed(`exactly one bearer token is allowed`);
  if (Buffer.byteLength(credential) > maxBytes) {
    throw malformed(`bearer token longer than ${maxBytes} bytes`);
  }
  if (!B64TOKEN.test(credential)) throw malformed(`bearer token contains characters not allowed by RFC 6750`);
  return credential;
}
