#!/usr/bin/env bash
# Builds the image `weft-local:dev` with no registry: FROM scratch, holding the Weft
# binaries from this checkout and the shared libraries `ldd` says they load.
#
#   compose/build-image.sh           build the binaries (debug, as the tests do), then the image
#   WEFT_PROFILE=release ...         use release binaries instead
#   WEFT_SKIP_CARGO=1 ...            reuse binaries already built (CI builds them once)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

profile=${WEFT_PROFILE:-debug}
bins=(weft-cp weftctl weft-sidecar weft-demo-app weft-pause)
if [ -z "${WEFT_SKIP_CARGO:-}" ]; then
  log "building the binaries ($profile)"
  flags=(--workspace --bins --locked)
  [ "$profile" = release ] && flags+=(--release)
  (cd "$repo_root" && cargo build "${flags[@]}")
fi
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
for b in "${bins[@]}"; do
  [ -x "$target_dir/$profile/$b" ] || die "$target_dir/$profile/$b is missing: run 'cargo build --workspace --bins' first"
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
data="$ctx/rootfs-data"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$data/weft-data" "$data/state"
chmod 1777 "$root/tmp"
chmod 0700 "$data/weft-data" "$data/state"

# Binaries without their debug sections (a tenth of the size; backtraces keep symbols).
for b in "${bins[@]}"; do
  if command -v objcopy >/dev/null 2>&1; then
    objcopy --strip-debug "$target_dir/$profile/$b" "$root/usr/local/bin/$b"
  else
    cp "$target_dir/$profile/$b" "$root/usr/local/bin/$b"
  fi
done

# Every library the binaries load, at the path the loader looks for it.
libs=$(for b in "${bins[@]}"; do ldd "$target_dir/$profile/$b"; done |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# A user to run as, and name resolution from /etc/hosts then DNS (Docker's resolver).
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
weft:x:65532:65532:weft:/state:/sbin/nologin
PASSWD
printf 'root:x:0:\nweft:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 rootfs-data/ /
USER 65532:65532
WORKDIR /
ENV PATH=/usr/local/bin
DOCKERFILE

# The classic builder needs no extra component; BuildKit needs buildx.
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
log "building image weft-local:dev from $profile binaries"
if ! out=$(docker build --quiet -t weft-local:dev "$ctx" 2>&1); then
  printf '%s\n' "$out" >&2
  die "docker build failed (output above)"
fi
