#!/usr/bin/env bash
# A Docker daemon for the deploy tests (docs/deploy.md, "Testing the image").
#
#   scripts/docker-daemon.sh start   install what is missing, start dockerd if none answers
#   scripts/docker-daemon.sh stop    stop the dockerd that `start` started (and only that one)
#
# On Debian the daemon, debootstrap (scripts/local-images.sh) and compose come
# from apt: docker.io, debootstrap, docker-compose. `start` must run as root;
# a daemon that already answers (Docker Desktop, a systemd unit) is used as
# it is and never stopped.
set -euo pipefail

pidfile=/run/tollgate-dockerd.pid
logfile=/var/log/tollgate-dockerd.log

answers() { timeout 20 docker info >/dev/null 2>&1; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "docker-daemon: installing ${missing[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

case "${1:-}" in
  start)
    # docker.io's /usr/bin/docker may sit behind another client on PATH: either speaks to the daemon.
    command -v docker >/dev/null 2>&1 || install_missing
    if answers; then
      echo "docker-daemon: a daemon already answers ($(docker info --format '{{.ServerVersion}}'))"
      install_missing
      exit 0
    fi
    install_missing
    [ "$(id -u)" = 0 ] || { echo "docker-daemon: dockerd must be started as root" >&2; exit 1; }
    echo "docker-daemon: starting dockerd (log: $logfile)"
    # setsid: the daemon outlives this script and its process group, and is stopped by pid alone.
    setsid dockerd >"$logfile" 2>&1 < /dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do
      if answers; then
        echo "docker-daemon: dockerd $(docker info --format '{{.ServerVersion}}') answers (pid $(cat "$pidfile"))"
        exit 0
      fi
      kill -0 "$(cat "$pidfile")" 2>/dev/null || break
      sleep 1
    done
    echo "docker-daemon: dockerd did not come up; the end of $logfile:" >&2
    tail -n 30 "$logfile" >&2 || true
    exit 1
    ;;
  stop)
    [ -f "$pidfile" ] || { echo "docker-daemon: no dockerd started by this script"; exit 0; }
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      echo "docker-daemon: stopping dockerd (pid $pid)"
      kill -TERM "$pid"
      # dockerd stops its containers first (10 s each at most), then exits.
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && { echo "docker-daemon: dockerd still running after 60 s, killing it" >&2; kill -KILL "$pid"; }
    fi
    rm -f "$pidfile"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
