# A stand-in for the official node:24-bookworm-slim, made by
# scripts/local-images.sh only where no image registry answers. Context: the
# Debian base (debootstrap --variant=minbase bookworm, imported as
# tollgate-local/debian:bookworm), Node and npm from the npm registry.
FROM tollgate-local/debian:bookworm
ARG NODE_VERSION
LABEL org.opencontainers.image.description="Local stand-in for node:24-bookworm-slim (scripts/local-images.sh)"
COPY node/bin/node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
# The official image's unprivileged user: node, uid and gid 1000.
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
  && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
  && groupadd --gid 1000 node \
  && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \
  && node --version && npm --version
# This machine only: outbound HTTPS goes through a proxy with its own
# certificate authority, so npm inside builds needs the host's bundle.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV NODE_VERSION=${NODE_VERSION} NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
