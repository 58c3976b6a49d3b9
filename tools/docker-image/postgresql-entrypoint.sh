#!/bin/sh
# Entrypoint of the local PostgreSQL test image: behaves like the official postgres image
# for the variables testcontainers' PostgresContainer sets. The data directory ($PGDATA)
# was initialised at build time with the superuser postgres; on the first start of a
# container this applies POSTGRES_PASSWORD, POSTGRES_USER (another superuser, when not
# postgres), POSTGRES_DB and POSTGRES_HOST_AUTH_METHOD in single-user mode, runs
# /docker-entrypoint-initdb.d/*.sql|*.sh through a temporary server without networking,
# then execs postgres as the postgres user, listening on 0.0.0.0:5432.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
user=${POSTGRES_USER:-postgres}
password=${POSTGRES_PASSWORD:-}
database=${POSTGRES_DB:-$user}
host_auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
marker="$PGDATA/.entrypoint-configured"

case "${1:-}" in
  -*) set -- postgres "$@" ;;
esac
if [ "${1:-}" != postgres ]; then
  exec "$@"
fi
shift

as_postgres() {
  setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}
say() {  # a line as it is: dash's echo would interpret the backslashes in it
  printf '%s\n' "$*"
}
sql_string() {  # a quoted SQL string literal (standard_conforming_strings is on)
  printf "'%s'" "$(printf '%s' "$1" | sed -e "s/'/''/g")"
}
sql_name() {  # a quoted SQL identifier
  printf '"%s"' "$(printf '%s' "$1" | sed -e 's/"/""/g')"
}

mkdir -p /var/run/postgresql
chown postgres:postgres /var/run/postgresql
chmod 2775 /var/run/postgresql

if [ ! -e "$marker" ]; then
  if [ -z "$password" ] && [ "$host_auth" != trust ]; then
    echo "Error: Database is uninitialized and superuser password is not specified." >&2
    echo "  You must specify POSTGRES_PASSWORD to a non-empty value for the superuser," \
      "or set POSTGRES_HOST_AUTH_METHOD=trust" >&2
    exit 1
  fi
  case "$password" in
    *'
'*)
      echo "Error: POSTGRES_PASSWORD must be one line" >&2
      exit 1
      ;;
  esac
  say "host all all all $host_auth" >>"$PGDATA/pg_hba.conf"
  # Single-user mode reads one statement per line.
  {
    if [ "$user" = postgres ]; then
      if [ -n "$password" ]; then
        say "ALTER ROLE postgres PASSWORD $(sql_string "$password");"
      fi
    else
      say "CREATE ROLE $(sql_name "$user") SUPERUSER LOGIN${password:+ PASSWORD $(sql_string "$password")};"
    fi
    if [ "$database" != postgres ]; then
      say "CREATE DATABASE $(sql_name "$database") OWNER $(sql_name "$user");"
    fi
  } | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
  scripts=$(find /docker-entrypoint-initdb.d -maxdepth 1 -type f \( -name '*.sql' -o -name '*.sh' \) 2>/dev/null | sort)
  if [ -n "$scripts" ]; then
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    for f in $scripts; do
      case "$f" in
        *.sql) as_postgres psql -v ON_ERROR_STOP=1 --no-psqlrc -U "$user" -d "$database" -f "$f" ;;
        *.sh) . "$f" ;;
      esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  touch "$marker"
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
