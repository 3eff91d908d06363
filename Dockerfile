# Tollgate's container image (docs/deploy.md):
#
#   docker build -t tollgate .
#   docker run --rm -p 8321:8321 -v tollgate-data:/app/data \
#     -e TOLLGATE_UPSTREAM=http://ollama.internal:11434 tollgate
#
# Three stages: `build` compiles TypeScript with every dependency, `deps`
# installs the production dependencies alone, and the runtime stage gets
# dist/ from the first and node_modules/ from the second, so neither the
# compiler nor the test tools ship.
#
# Node 24 at run time: it has the built-in node:sqlite, so the optional
# native better-sqlite3 (Node 20's SQLite driver) is neither built nor
# shipped, and no compiler is needed in any stage.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` (the build) would run before the sources are
# here, and better-sqlite3's native build is not needed on Node 24.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The build copies the web console's files (src/console) into dist/console.
COPY scripts/build-console.mjs ./scripts/
RUN npm run build

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only. --ignore-scripts: `prepare` runs tsc, a dev
# dependency that is not installed here (dist/ comes from the build stage).
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund \
  && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Code and dependencies stay owned by root: the gateway's user can read them
# but not change them. Only /app/data (SQLite files) is writable by it.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY deploy/image.yaml ./config/tollgate.yaml
# `tollgate` on PATH, for `docker exec <container> tollgate keys create ...`.
RUN mkdir -p /app/data && chown node:node /app/data \
  && printf '#!/bin/sh\nexec node /app/dist/cli/main.js "$@"\n' >/usr/local/bin/tollgate \
  && chmod 755 /usr/local/bin/tollgate
VOLUME ["/app/data"]
EXPOSE 8321
# The official image's unprivileged user (uid 1000).
USER node
# No curl in slim images: node itself asks GET /health. TLS is accepted
# without verification because this only asks the container's own loopback
# whether it is alive; set TOLLGATE_HEALTHCHECK_URL for another port or https.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "const u = new URL(process.env.TOLLGATE_HEALTHCHECK_URL || 'http://127.0.0.1:8321/health'); require(u.protocol === 'https:' ? 'node:https' : 'node:http').get(u, { rejectUnauthorized: false, timeout: 3000 }, (r) => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1)).on('timeout', () => process.exit(1))"]
ENTRYPOINT ["node", "dist/cli/main.js"]
# On a data volume that never held a key, serve prints the first admin key
# once on stderr; add `--admin-key-file /app/data/admin-key` to get it in a
# 0600 file instead (docs/deploy.md), or create keys with `keys create`.
CMD ["serve", "--config", "/app/config/tollgate.yaml"]
