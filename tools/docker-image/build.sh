#!/usr/bin/env bash
# Build the local MariaDB test image from Debian packages: no container registry needed.
#
#   tools/docker-image/build.sh [NAME]      (default dbleak-mariadb:bookworm)
#
# debootstrap a minimal Debian with mariadb-server from the mirror apt uses here,
# initialise its datadir, and `docker import` it with entrypoint.sh, which honours
# MYSQL_ROOT_PASSWORD, MYSQL_DATABASE, MYSQL_USER and MYSQL_PASSWORD like the official
# images. Built once per machine: the image carries a label with a hash of its inputs
# (this script, the entrypoint, server.cnf, suite and mirror); rebuilt only when they change.
# Prints the image name on stdout; progress goes to stderr. Needs root and a daemon.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
name=${1:-dbleak-mariadb:bookworm}
suite=bookworm
label=org.pytest-dbleak.inputs

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
inputs=$(cat "$here/build.sh" "$here/entrypoint.sh" "$here/server.cnf" <(echo "$suite $mirror") \
  | sha256sum | cut -c1-16)

current() {
  docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$name" 2>/dev/null || true
}

if [ "$(current)" = "$inputs" ]; then
  echo "$name"
  exit 0
fi

# Concurrent builds on one machine wait for each other instead of building twice.
exec 9>"${TMPDIR:-/tmp}/dbleak-docker-image.lock"
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
debootstrap --variant=minbase --include=mariadb-server "$suite" "$rootfs" "$mirror" >&2

# A datadir initialised at build time: a container then only applies its variables.
install -m 0644 "$here/server.cnf" "$rootfs/etc/mysql/mariadb.conf.d/60-dbleak.cnf"
rm -rf "$rootfs/var/lib/mysql" && mkdir -p "$rootfs/var/lib/mysql" "$rootfs/run/mysqld"
chroot "$rootfs" chown mysql:mysql /var/lib/mysql /run/mysqld
chroot "$rootfs" mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db --force \
  --auth-root-authentication-method=socket >&2
install -m 0755 "$here/entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$rootfs/docker-entrypoint-initdb.d"
# Only what a server needs at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info

tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["mariadbd"]' \
  --change 'EXPOSE 3306' \
  --change "LABEL $label=$inputs" \
  - "$name" >&2
# The image it replaces, now untagged, would only take up space.
if [ -n "$old_id" ]; then docker image rm "$old_id" >/dev/null 2>&1 || true; fi
echo "$name"
