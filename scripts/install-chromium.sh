#!/usr/bin/env bash
# Installs Debian's chromium (and curl, jq for docs/admin.md's examples) when
# missing: the console's browser test (test/admin/console.browser.test.ts)
# drives /usr/bin/chromium with playwright-core, which downloads no browser
# of its own. Called by .ci/run; safe to run again.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
