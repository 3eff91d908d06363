# A stand-in for the official redis image (deploy/compose.yaml's redis
# service), made by scripts/local-images.sh only where no image registry
# answers: Debian's redis-server on the local Debian base.
FROM tollgate-local/debian:bookworm
LABEL org.opencontainers.image.description="Local stand-in for redis:7 (scripts/local-images.sh)"
RUN apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
  && rm -rf /var/lib/apt/lists/* \
  && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
