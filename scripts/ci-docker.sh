#!/usr/bin/env bash
# CI's container step (.ci/run; docs/deploy.md): a Docker daemon (started
# here when none answers, and then stopped after), the base images (pulled,
# else made locally by scripts/local-images.sh), then test/deploy/ under
# CI=true: the image built from a clean checkout and run, drained by
# `docker stop`, and the compose stack up with two gateway replicas. Prints
# how long each part took. Whatever a test run left behind (containers,
# volumes, networks labelled org.tollgate.test, compose projects
# tollgate-test-*) is removed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"
started=$SECONDS
mark() { echo "== docker: $* ($((SECONDS - started)) s so far)"; }

# A daemon that answered before this step (a developer's, a systemd unit's) is left running.
if timeout 20 docker info >/dev/null 2>&1; then
  trap 'sweep || true' EXIT
else
  trap 'sweep || true; scripts/docker-daemon.sh stop' EXIT
fi
scripts/docker-daemon.sh start

sweep() {
  local ids
  ids=$(docker ps -aq --filter label=org.tollgate.test
    docker ps -a --format '{{.ID}} {{.Label "com.docker.compose.project"}}' | awk '$2 ~ /^tollgate-test-/ {print $1}')
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  docker volume ls -q --filter label=org.tollgate.test | xargs -r docker volume rm -f >/dev/null
  docker volume ls -q | grep '^tollgate-test-' | xargs -r docker volume rm -f >/dev/null || true
  docker network ls -q --filter label=org.tollgate.test | xargs -r docker network rm >/dev/null
  docker network ls --format '{{.Name}}' | grep '^tollgate-test-' | xargs -r docker network rm >/dev/null || true
  # Build stages of earlier runs (the legacy builder keeps them as untagged images); a day's are kept as cache.
  docker image prune -f --filter until=24h >/dev/null
}
sweep
mark "daemon up"

eval "$(scripts/local-images.sh)"
mark "base images ready: node:24-bookworm-slim, $TOLLGATE_REDIS_IMAGE, $TOLLGATE_POSTGRES_IMAGE"

npm run build >/dev/null
# TOLLGATE_TEST_DOCKER=1: build and run the image (test/deploy/container.test.ts); the
# file takes minutes, above the runner's usual limit of 2 a file.
TOLLGATE_TEST_DOCKER=1 TOLLGATE_TEST_TIMEOUT_MS=1800000 node scripts/test.mjs test/deploy
mark "test/deploy passed"
