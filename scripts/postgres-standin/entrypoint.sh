#!/bin/bash
# Entrypoint of the postgres:15 stand-in image (see Dockerfile beside this file).
# First start on an empty data directory: initdb as POSTGRES_USER with POSTGRES_PASSWORD,
# password auth from the network, create POSTGRES_DB, run /docker-entrypoint-initdb.d.
# Every start: exec the server in the foreground as the postgres user.
set -Eeuo pipefail

log() { printf 'postgres-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ $# -eq 0 || $1 == -* ]]; then
    set -- postgres "$@"
fi
# Anything but the server (a shell, psql, ...) runs as asked.
if [[ $1 != postgres ]]; then
    exec "$@"
fi

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [[ $(id -u) -eq 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres {} +
    chmod 0700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 2777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

run_initdb_dir() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e $f ]] || continue
        case $f in
        *.sh)
            log "running $f"
            # shellcheck disable=SC1090 # the init scripts are the user's
            if [[ -x $f ]]; then "$f"; else . "$f"; fi
            ;;
        *.sql)
            log "running $f"
            psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$PGUSER" --dbname "$POSTGRES_DB" -f "$f"
            ;;
        *) log "ignoring $f" ;;
        esac
    done
}

first_start() {
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    local pwopt=()
    if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
        local pwfile
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        pwopt=(--pwfile="$pwfile")
    elif [[ $auth != trust ]]; then
        die "POSTGRES_PASSWORD is not set: the database would refuse every network login" \
            "(set it, or POSTGRES_HOST_AUTH_METHOD=trust for a throwaway database)"
    fi

    log "initialising $PGDATA for user '$POSTGRES_USER'"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags
    initdb -D "$PGDATA" --username="$POSTGRES_USER" "${pwopt[@]}" \
        --auth-local=trust --auth-host="$auth" --encoding=UTF8 --locale=C.UTF-8 \
        ${POSTGRES_INITDB_ARGS:-}
    if [[ ${#pwopt[@]} -gt 0 ]]; then
        rm -f "${pwopt[0]#--pwfile=}"
    fi

    printf '\n# docker: any address, password authentication\nhost all all all %s\n' \
        "$auth" >>"$PGDATA/pg_hba.conf"
    printf "\n# docker\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # A socket-only server for the set-up, so nothing on the network (nor a
    # `pg_isready -h 127.0.0.1` health check) sees the database before it is ready.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 start
    export PGUSER="$POSTGRES_USER"
    if [[ $POSTGRES_DB != postgres ]]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc --dbname postgres -v db="$POSTGRES_DB" \
            <<<'CREATE DATABASE :"db";'
    fi
    run_initdb_dir
    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop
    log "initialisation complete"
}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    first_start
fi
unset POSTGRES_PASSWORD
exec "$@"
