#!/usr/bin/env bash
# Offline stand-ins for the official base images, built from Debian packages.
#
# Only for a machine whose Docker cannot pull from Docker Hub (the compose test uses them
# when `docker pull` fails). Each is a Debian bookworm root filesystem made by mmdebstrap
# (variant minbase, like debian:bookworm-slim; apt-get install mmdebstrap; run as root),
# loaded with `docker import` and tagged with an honest name of its own, never as the
# official image it stands in for:
#
#   orchestrator-local/python:3.11   for BASE_IMAGE      (python:3.11-slim): python3.11, venv,
#                                    ca-certificates, netbase, tzdata
#   orchestrator-local/postgres:15   for POSTGRES_IMAGE  (postgres:18): postgresql-15
#   orchestrator-local/redis:7       for REDIS_IMAGE     (redis:7): redis-server 7.0
#
# They behave like the official images as far as compose.yaml relies on them: python and
# python3 in /usr/local/bin; postgres initialises $PGDATA from POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB (scram-sha-256, listening on every address), runs as `postgres`, has
# pg_isready on PATH and the official image's layout from 18 on (the volume
# /var/lib/postgresql, PGDATA /var/lib/postgresql/<major>/docker); redis runs `redis-server`
# as `redis` in /data. (`docker import` cannot set STOPSIGNAL: compose.yaml gives postgres
# SIGINT, as the official image has.) Nothing of this machine (no CA, no key) is copied into
# them.
#
#   deploy/local-images.sh [python] [postgres] [redis]     (default: all three)
#   then: BASE_IMAGE=orchestrator-local/python:3.11 POSTGRES_IMAGE=… REDIS_IMAGE=… docker compose …
set -euo pipefail

SUITE=${SUITE:-bookworm}
PREFIX=${LOCAL_IMAGE_PREFIX:-orchestrator-local}
# no documentation, manual pages or translations in the images
SLIM=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
      --dpkgopt='path-exclude=/usr/share/info/*')

command -v mmdebstrap >/dev/null || { echo "local-images: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

build() {  # build NAME TAG PACKAGES [mmdebstrap args…] -- [docker import --change …]
    local name=$1 tag=$2 packages=$3; shift 3
    local mm=() changes=()
    while (($#)) && [[ $1 != -- ]]; do mm+=("$1"); shift; done
    (($#)) && shift
    while (($#)); do changes+=(--change "$1"); shift; done
    echo "local-images: building $tag ($name: $packages)" >&2
    mmdebstrap --quiet --variant=minbase --include="$packages" "${SLIM[@]}" "${mm[@]}" \
        "$SUITE" "$WORK/$name.tar"
    docker import "${changes[@]}" "$WORK/$name.tar" "$tag" >/dev/null
    rm -f "$WORK/$name.tar"
    echo "local-images: $tag ready" >&2
}

python_image() {
    build python "$PREFIX/python:3.11" "python3.11,python3.11-venv,ca-certificates,netbase,tzdata,passwd" \
        --customize-hook='ln -sf /usr/bin/python3.11 "$1/usr/local/bin/python3"' \
        --customize-hook='ln -sf /usr/bin/python3.11 "$1/usr/local/bin/python"' \
        -- 'ENV LANG=C.UTF-8' 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
           'CMD ["python3"]'
}

# The official image's entrypoint, reduced to what compose.yaml uses.
pg_entrypoint() {
    cat <<'SH'
#!/bin/sh
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/15/docker}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD is not set" >&2; exit 1
    fi
    pw=$(mktemp); printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" -E UTF8 --no-locale \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses= -k /tmp" -w start >/dev/null
        PGPASSWORD=$POSTGRES_PASSWORD psql -v ON_ERROR_STOP=1 -q -h /tmp -U "$POSTGRES_USER" \
            -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "initialised $PGDATA (database $POSTGRES_DB, user $POSTGRES_USER)"
fi
exec "$@"
SH
}

postgres_image() {
    local entrypoint=$WORK/docker-entrypoint.sh
    pg_entrypoint > "$entrypoint"
    build postgres "$PREFIX/postgres:15" "postgresql-15,tzdata" --skip=cleanup/run \
        --customize-hook='rm -rf "$1/var/lib/postgresql/15" "$1/etc/postgresql/15"' \
        --customize-hook='mkdir -p "$1/run/postgresql"' \
        --customize-hook='chroot "$1" chown postgres:postgres /var/lib/postgresql /run/postgresql' \
        --customize-hook="upload $entrypoint /usr/local/bin/docker-entrypoint.sh" \
        --customize-hook='chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"' \
        -- 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
           'ENV PGDATA=/var/lib/postgresql/15/docker' 'ENV LANG=C.UTF-8' 'USER postgres' \
           'VOLUME /var/lib/postgresql' 'EXPOSE 5432' \
           'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]'
}

redis_image() {
    build redis "$PREFIX/redis:7" "redis-server" \
        --customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
        -- 'USER redis' 'WORKDIR /data' 'VOLUME /data' 'EXPOSE 6379' 'CMD ["redis-server"]'
}

targets=("$@")
((${#targets[@]})) || targets=(python postgres redis)
for t in "${targets[@]}"; do
    case $t in
        python|postgres|redis) "${t}_image" ;;
        *) echo "local-images: unknown image '$t' (python, postgres, redis)" >&2; exit 2 ;;
    esac
done
