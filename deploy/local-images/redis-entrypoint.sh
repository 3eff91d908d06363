#!/bin/sh
# As the official image's entrypoint: started without a config file, Redis
# would refuse every client outside the container (protected mode, no
# password); the container's network is the boundary instead.
set -e
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
exec "$@"
