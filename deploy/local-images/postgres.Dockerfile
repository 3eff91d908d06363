# A stand-in for the official postgres image (deploy/compose.yaml's postgres
# service), made by scripts/local-images.sh only where no image registry
# answers: Debian's PostgreSQL 15 on the local Debian base, initialised from
# POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB as the official one is.
FROM tollgate-local/debian:bookworm
LABEL org.opencontainers.image.description="Local stand-in for postgres (scripts/local-images.sh)"
RUN apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 \
  && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql/15 \
  && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
  && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
  && chmod 700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
USER postgres
EXPOSE 5432
# Fast shutdown, as the official image.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
