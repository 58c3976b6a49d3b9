#!/usr/bin/env bash
# Build a local test image from Debian packages: no container registry needed.
#
#   tools/docker-image/build.sh [mariadb] [NAME]      (default dbleak-mariadb:bookworm)
#   tools/docker-image/build.sh postgresql [NAME]     (default dbleak-postgresql:bookworm)
#
# debootstrap a minimal Debian with the server from the mirror apt uses here, initialise
# its data directory, and `docker import` it with an entrypoint that honours the variables
# testcontainers sets, like the official images:
#   mariadb:    mariadb-server, entrypoint.sh (MYSQL_ROOT_PASSWORD, MYSQL_DATABASE,
#               MYSQL_USER, MYSQL_PASSWORD), server.cnf;
#   postgresql: postgresql-15, postgresql-entrypoint.sh (POSTGRES_PASSWORD, POSTGRES_USER,
#               POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD), postgresql.conf.
# Built once per machine: the image carries a label with a hash of its inputs (this
# script, the variant's files, suite and mirror); rebuilt only when they change.
# Prints the image name on stdout; progress goes to stderr. Needs root and a daemon.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
variant=mariadb
case "${1:-}" in
  mariadb | postgresql) variant=$1; shift ;;
esac
suite=bookworm
label=org.pytest-dbleak.inputs
if [ "$variant" = postgresql ]; then
  name=${1:-dbleak-postgresql:bookworm}
  files=("$here/postgresql-entrypoint.sh" "$here/postgresql.conf")
else
  name=${1:-dbleak-mariadb:bookworm}
  files=("$here/entrypoint.sh" "$here/server.cnf")
fi

# The first non-security Debian URI of apt's sources (deb822 or one-line format).
mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
             -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
    | grep -v -e security -e '^$' | grep -i debian | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

mirror=$(mirror)
inputs=$(cat "$here/build.sh" "${files[@]}" <(echo "$variant $suite $mirror") \
  | sha256sum | cut -c1-16)

current() {
  docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$name" 2>/dev/null || true
}

if [ "$(current)" = "$inputs" ]; then
  echo "$name"
  exit 0
fi

# Concurrent builds of one variant on one machine wait for each other instead of
# building twice.
exec 9>"${TMPDIR:-/tmp}/dbleak-docker-image-$variant.lock"
flock 9
if [ "$(current)" = "$inputs" ]; then
  echo "$name"
  exit 0
fi

old_id=$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/dbleak-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"  # it becomes the image's /
echo "building $name from $mirror ($suite) in $rootfs" >&2

if [ "$variant" = postgresql ]; then
  debootstrap --variant=minbase --include=postgresql-15 "$suite" "$rootfs" "$mirror" >&2
  # A data directory initialised at build time (superuser postgres, no password yet): a
  # container then only applies its variables. The package's own cluster is not used.
  rm -rf "$rootfs/etc/postgresql/15" "$rootfs/var/lib/postgresql/15"
  pgdata=/var/lib/postgresql/data
  mkdir -p "$rootfs$pgdata" "$rootfs/var/run/postgresql"
  chroot "$rootfs" chown postgres:postgres "$pgdata" /var/run/postgresql
  chmod 0700 "$rootfs$pgdata"
  chroot --userspec=postgres:postgres "$rootfs" env HOME=/var/lib/postgresql \
    /usr/lib/postgresql/15/bin/initdb --pgdata="$pgdata" --username=postgres \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
    --no-sync >&2
  install -m 0644 -o "$(stat -c %u "$rootfs$pgdata")" -g "$(stat -c %g "$rootfs$pgdata")" \
    "$here/postgresql.conf" "$rootfs$pgdata/dbleak.conf"
  echo "include 'dbleak.conf'" >>"$rootfs$pgdata/postgresql.conf"
  install -m 0755 "$here/postgresql-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
  changes=(
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change "ENV PGDATA=$pgdata"
    --change 'CMD ["postgres"]'
    --change 'EXPOSE 5432'
  )
else
  debootstrap --variant=minbase --include=mariadb-server "$suite" "$rootfs" "$mirror" >&2
  # A datadir initialised at build time: a container then only applies its variables.
  install -m 0644 "$here/server.cnf" "$rootfs/etc/mysql/mariadb.conf.d/60-dbleak.cnf"
  rm -rf "$rootfs/var/lib/mysql" && mkdir -p "$rootfs/var/lib/mysql" "$rootfs/run/mysqld"
  chroot "$rootfs" chown mysql:mysql /var/lib/mysql /run/mysqld
  chroot "$rootfs" mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
    --force --auth-root-authentication-method=socket >&2
  install -m 0755 "$here/entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
  changes=(--change 'CMD ["mariadbd"]' --change 'EXPOSE 3306')
fi
mkdir -p "$rootfs/docker-entrypoint-initdb.d"
# Only what a server needs at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info

tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  "${changes[@]}" \
  --change "LABEL $label=$inputs" \
  - "$name" >&2
# The image it replaces, now untagged, would only take up space.
if [ -n "$old_id" ]; then docker image rm "$old_id" >/dev/null 2>&1 || true; fi
echo "$name"
