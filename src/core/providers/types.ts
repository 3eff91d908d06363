import type { User } from "../user.js";

/** What a provider sees of the request it authenticates. */
export interface AuthRequest {
  /** The bearer credential, already parsed and size-checked; absent for header-based providers. */
  readonly token: string | undefined;
  /** Canonical path of the request. */
  readonly path: string;
  /** Raw query string, without `?`. */
  readonly query: string;
  /** Request headers, names lower-case (Node's `IncomingHttpHeaders` shape). */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The peer address, for providers that trust only some peers. */
  readonly remoteAddress?: string | undefined;
  /** Aborted when the client goes away; providers pass it to every outbound call. */
  readonly signal?: AbortSignal | undefined;
}

/**
 * An authentication provider turns a request's credential into a {@link User}.
 *
 * `authenticate` resolves with the user, or rejects with an `AuthError` (401:
 * the credential is bad) or an `IdentityUnavailableError` (503: the identity
 * service could not answer). Anything else it throws is treated as 503 too:
 * the pipeline fails closed.
 */
export interface AuthProvider {
  /** The config `type` this provider implements. */
  readonly type: string;
  /**
   * `bearer`: the pipeline parses `Authorization: Bearer` and refuses requests
   * without one. `headers`: the provider reads its own headers (upstream_header).
   */
  readonly credential: "bearer" | "headers";
  /** The 401 message when no credential was sent (`Authentication required...`). */
  readonly authRequiredMessage: string;
  authenticate(request: AuthRequest): Promise<User>;
  /**
   * Readiness (GET /ready): resolves with `undefined` once the identity
   * service has been reached at least once (JWKS loaded, endpoint answered),
   * trying now if it has not; otherwise with a short reason, never a secret.
   * Absent: nothing to reach (the provider is always ready).
   */
  ready?(): Promise<string | undefined>;
  close(): Promise<void>;
}

/**
 * What providers report for metrics. Names are fixed by the code (`jwks`,
 * `introspection`, `verified_token`, ...), never taken from a request.
 */
export interface ProviderObserver {
  /** One call to an identity service; `ok` false when it gave no usable answer (unreachable, timeout, 5xx). */
  identityCall(service: string, ok: boolean): void;
  /** One lookup in a provider's cache. */
  cacheLookup(cache: string, hit: boolean): void;
}
