#!/bin/sh
# Entrypoint of the local test image: behaves like the official mysql/mariadb images for
# the variables testcontainers' MySqlContainer sets. On the first start of a container it
# applies MYSQL_ROOT_PASSWORD, MYSQL_DATABASE, MYSQL_USER and MYSQL_PASSWORD (MARIADB_*
# spellings too) and runs /docker-entrypoint-initdb.d/*.sql|*.sh through a temporary
# server without networking, then execs the real server. Each server logs
# "ready for connections", which is what MySqlContainer waits for (twice).
set -eu

datadir=/var/lib/mysql
marker="$datadir/.entrypoint-configured"
sock=/run/mysqld/init.sock

env_of() {  # the MYSQL_ value, else the MARIADB_ one, else empty
  eval "v=\${MYSQL_$1:-\${MARIADB_$1:-}}"
  printf '%s' "$v"
}
say() {  # a line as it is: dash's echo would interpret the backslashes in it
  printf '%s\n' "$*"
}
sql_string() {  # a quoted SQL string literal
  printf "'%s'" "$(printf '%s' "$1" | sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/''/g")"
}

root_password=$(env_of ROOT_PASSWORD)
allow_empty=$(env_of ALLOW_EMPTY_PASSWORD)
random_root=$(env_of RANDOM_ROOT_PASSWORD)
database=$(env_of DATABASE)
user=$(env_of USER)
password=$(env_of PASSWORD)

mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld

if [ ! -e "$marker" ]; then
  if [ -z "$root_password" ] && [ -z "$allow_empty" ] && [ -z "$random_root" ]; then
    echo "error: database is uninitialized and password option is not specified" >&2
    echo "  You need to specify one of MYSQL_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD" \
      "and MYSQL_RANDOM_ROOT_PASSWORD" >&2
    exit 1
  fi
  if [ -n "$random_root" ]; then
    root_password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "GENERATED ROOT PASSWORD: $root_password"
  fi
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$sock" \
    --skip-name-resolve &
  init_pid=$!
  tries=0
  until mariadb-admin --socket="$sock" -uroot --silent ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ] || ! kill -0 "$init_pid" 2>/dev/null; then
      echo "error: the temporary server did not start" >&2
      exit 1
    fi
    sleep 0.05
  done
  {
    say "SET @@SESSION.SQL_LOG_BIN=0;"
    say "DELETE FROM mysql.global_priv WHERE User = '' OR Host NOT IN ('localhost');"
    say "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$root_password");"
    say "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    say "ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_string "$root_password");"
    if [ -n "$database" ]; then
      say "CREATE DATABASE IF NOT EXISTS \`$database\`;"
    fi
    if [ -n "$user" ] && [ "$user" != root ]; then
      say "CREATE USER $(sql_string "$user")@'%' IDENTIFIED BY $(sql_string "$password");"
      if [ -n "$database" ]; then
        say "GRANT ALL PRIVILEGES ON \`$database\`.* TO $(sql_string "$user")@'%';"
      fi
    fi
    say "FLUSH PRIVILEGES;"
  } | mariadb --socket="$sock" -uroot
  auth="--password=$root_password"
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) mariadb --socket="$sock" -uroot "$auth" ${database:+"$database"} < "$f" ;;
      *.sh) . "$f" ;;
      *) ;;
    esac
  done
  mariadb-admin --socket="$sock" -uroot "$auth" shutdown
  wait "$init_pid" || true
  touch "$marker"
fi

if [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ]; then
  shift
fi
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve "$@"
