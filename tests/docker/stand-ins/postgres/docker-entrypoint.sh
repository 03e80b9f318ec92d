#!/bin/bash
# Starts Debian's PostgreSQL as the official postgres image does, for what docker-compose.yml
# relies on: on an empty PGDATA (/var/lib/postgresql/data, the volume) a new cluster whose
# superuser is POSTGRES_USER (default postgres) with the password POSTGRES_PASSWORD (required),
# the database POSTGRES_DB (default: the user's name), password (scram-sha-256) logins from any
# address; the server on 5432 on every address, and its socket in /var/run/postgresql for the
# health probe `pg_isready -U "$POSTGRES_USER" -d "$POSTGRES_DB"`. A cluster already in the
# volume is started as it is.
set -euo pipefail

if [[ "${1:-}" != "postgres" ]]; then
    exec "$@"
fi

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        echo "postgres stand-in: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    echo "postgres stand-in: initializing $PGDATA for user $user, database $db"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [[ "$db" != "postgres" ]]; then
        # Single-user mode: no server listens yet, so no health probe sees a half-made cluster.
        quoted="\"${db//\"/\"\"}\""
        echo "CREATE DATABASE $quoted;" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
