#!/usr/bin/env bash
# Builds the image `weft-postgres:dev` with no registry: FROM scratch, holding Debian's
# PostgreSQL server (initdb, postgres, its share and lib directories), the libraries
# `ldd` says they load, and a POSIX shell for the start script. Installs Debian's
# `postgresql` package first when it is missing (as root, with apt-get).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] ||
    die "PostgreSQL's server binaries are missing: install Debian's postgresql package"
  log "installing Debian's postgresql package (its binaries go into the image)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
pgroot=$(dirname "$bindir")          # /usr/lib/postgresql/<version>
version=$(basename "$pgroot")
share=/usr/share/postgresql/$version
[ -d "$share" ] || die "$share is missing: reinstall Debian's postgresql-$version package"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
# What the server writes: owned by its user in the image (COPY --chown below).
data="$ctx/rootfs-data"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root$pgroot" "$root/usr/share/postgresql" \
  "$root/usr/share/zoneinfo" "$root/usr/local/bin" "$data/var/lib/weft-pg" "$data/run/postgresql"
chmod 1777 "$root/tmp"
chmod 0700 "$data/var/lib/weft-pg"
cp -a "$bindir" "$root$pgroot/"
cp -a "$pgroot/lib" "$root$pgroot/"
cp -a "$share" "$root/usr/share/postgresql/"
cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
cp -L "$(command -v dash || echo /bin/sh)" "$root/bin/sh"

# Every library the binaries (and the shell) load, at the path the loader looks for it.
libs=$(for f in "$bindir/postgres" "$bindir/initdb" "$root/bin/sh" "$pgroot"/lib/*.so; do ldd "$f" 2>/dev/null || true; done |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# PostgreSQL refuses to run as root: it runs as this user, which owns its data.
printf 'root:x:0:0:root:/:/sbin/nologin\npostgres:x:70:70:postgres:/var/lib/weft-pg:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:70:\n' >"$root/etc/group"

# First start: a cluster with the role `weft` and its database `weft`. The demo trusts
# every client on its private network; a real deployment sets passwords or TLS.
cat >"$root/usr/local/bin/weft-postgres-start" <<START
#!/bin/sh
set -e
PGDATA=/var/lib/weft-pg/data
if [ ! -f "\$PGDATA/PG_VERSION" ]; then
  $bindir/initdb -D "\$PGDATA" -U weft --auth=trust --locale=C -E UTF8 >/dev/null
  echo "host all all all trust" >>"\$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE weft" | $bindir/postgres --single -D "\$PGDATA" postgres >/dev/null
fi
exec $bindir/postgres -D "\$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
START
chmod 0755 "$root/usr/local/bin/weft-postgres-start"

cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
COPY --chown=70:70 rootfs-data/ /
USER 70:70
ENV TZ=UTC PATH=/bin
CMD ["/bin/sh", "/usr/local/bin/weft-postgres-start"]
DOCKERFILE

if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
log "building image weft-postgres:dev from PostgreSQL $version"
if ! out=$(docker build --quiet -t weft-postgres:dev "$ctx" 2>&1); then
  printf '%s\n' "$out" >&2
  die "docker build failed (output above)"
fi
