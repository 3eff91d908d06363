import type { ProviderConfig } from "../config/schema.js";
import type { Logger } from "../log.js";
import type { RecordStore } from "../stores/types.js";
import { createApiKeyProvider } from "./api-key.js";
import { createCustomProvider } from "./custom.js";
import { createGitHubProvider } from "./github.js";
import { createKubernetesProvider } from "./kubernetes.js";
import { createOAuth2Provider } from "./oauth2.js";
import type { AuthProvider, ProviderObserver } from "./types.js";
import { createUpstreamHeaderProvider } from "./upstream-header.js";

export interface ProviderDeps {
  /** The record store; required by `api_key`. */
  store?: RecordStore | undefined;
  log: Logger;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
  /** Told about identity-service calls and cache lookups (the gateway's metrics). */
  observer?: ProviderObserver | undefined;
}

/** Builds the provider a validated `server.auth.provider_config` describes. */
export function createProvider(config: ProviderConfig, deps: ProviderDeps): AuthProvider {
  switch (config.type) {
    case "custom":
      return createCustomProvider(config, deps);
    case "upstream_header":
      return createUpstreamHeaderProvider(config);
    case "api_key":
      if (!deps.store) throw new Error("the api_key provider needs a record store");
      return createApiKeyProvider(config, { ...deps, store: deps.store });
    case "oauth2_token":
      return createOAuth2Provider(config, deps);
    case "github_token":
      return createGitHubProvider(config, deps);
    case "kubernetes":
      return createKubernetesProvider(config, deps);
  }
}
