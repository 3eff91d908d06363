#!/usr/bin/env bash
# Installs what `npm run bench` uses when present, on a fresh Debian/Ubuntu
# machine: nginx (scenario 7, a plain reverse proxy for comparison) and wrk
# (a C load generator, used instead of autocannon when installed: it leaves
# more of the machine to the processes being measured).
#
#   sudo scripts/install-bench-tools.sh
#
# The benchmark never installs anything by itself, except nginx when run
# with BENCH_INSTALL_NGINX=1 (it then calls this script). The nginx service
# is not needed: the benchmark starts its own nginx with its own config, as
# the invoking user, and stops it afterwards.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -- "$0" "$@"; fi
  echo "install-bench-tools: run as root (or install sudo)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-bench-tools: apt-get not found; install nginx and wrk with your package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx-light wrk 2>/dev/null \
  || apt-get install -y -qq --no-install-recommends nginx wrk
# The packaged service is not what the benchmark uses; do not leave it holding port 80.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
  systemctl disable nginx >/dev/null 2>&1 || true
fi
echo "install-bench-tools: $(nginx -v 2>&1); wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}')"
