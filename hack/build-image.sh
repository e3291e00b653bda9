#!/usr/bin/env bash
# Build the archaudit container image with buildah, from a Debian base made here, for every platform
# this machine can build; optionally push it (a manifest list when several platforms built).
#
# Why a local base: no base image can be pulled on the project's machines, only Debian packages. So
# the base is `debootstrap --variant=minbase` + python3/venv/pip, imported into buildah and passed as
# the Dockerfile's PYTHON_IMAGE; the Dockerfile itself stays the one a buildx build uses with the
# official python image. The base rootfs is cached in $ARCHAUDIT_CACHE/images, keyed by a hash of its
# recipe, because debootstrap is the slow part (minutes; far longer under emulation).
#
# Foreign platforms need RUN steps executed by qemu-user through binfmt_misc; the script installs
# qemu-user-static + binfmt-support and registers them when it can (a machine-wide change: the
# registrations stay until reboot). A platform that cannot be built is reported (stderr and the
# --result file) and skipped; the native platform must build. buildah uses its own vfs storage under
# the cache (about 7 GB for three platforms: vfs copies every layer whole); stale layers are pruned
# after each build, and `rm -rf $ARCHAUDIT_CACHE/buildah` is always safe.
#
# Usage: hack/build-image.sh [--platform P]... [--push HOST:PORT] [--tag NAME:TAG] [--result FILE]
#                            [--strict]
#   --platform  linux/amd64, linux/arm64, linux/arm/v7 (repeatable; default: all three)
#   --push      push to the plain-HTTP registry at HOST:PORT as HOST:PORT/NAME:TAG
#   --result    write what happened, one fact a line (built/failed/pushed/size/time ...)
#   --strict    fail when any requested platform could not be built
# Environment: ARCHAUDIT_CACHE (default ~/.cache/archaudit), ARCHAUDIT_BUILDAH_ROOT and
# ARCHAUDIT_BUILDAH_RUNROOT (buildah storage, default under the cache), ARCHAUDIT_DEBIAN_MIRROR
# (default: the Debian mirror apt is configured with).
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(...) fails the build too

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ARCHAUDIT_CACHE:-$HOME/.cache/archaudit}
IMAGES=$CACHE/images
STORE_ROOT=${ARCHAUDIT_BUILDAH_ROOT:-$CACHE/buildah/storage}
RUNROOT=${ARCHAUDIT_BUILDAH_RUNROOT:-$CACHE/buildah/run}
LOGS=$CACHE/buildah/logs
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
# Bump when the way the rootfs is made or trimmed changes: it is part of the cache key.
RECIPE_VERSION=1

TAG=archaudit:dev
PUSH=""
RESULT=""
STRICT=0
PLATFORMS=()

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
fact() { [ -z "$RESULT" ] || printf '%s\n' "$*" >>"$RESULT"; }

bh() { buildah --root "$STORE_ROOT" --runroot "$RUNROOT" --storage-driver vfs "$@"; }

# -- platforms: Debian and qemu names for an OCI platform

deb_arch() {
  case $1 in
    linux/amd64) echo amd64 ;; linux/arm64 | linux/arm64/v8) echo arm64 ;; linux/arm/v7) echo armhf ;;
    *) return 1 ;;
  esac
}
qemu_name() { case $1 in arm64) echo aarch64 ;; armhf) echo arm ;; esac; }
slug() { deb_arch "$1"; }
# A working container of a local image, named with its platform (unnamed, buildah expects the host's
# and warns).
bh_from() {
  bh from --quiet --pull=never --arch "$(echo "$1" | cut -d/ -f2)" --variant "$(echo "$1" | cut -s -d/ -f3)" "$2"
}
native_arch() { dpkg --print-architecture; }

# -- tools

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian archive apt already uses (deb822 or one-line sources): the only mirror this machine reaches.
debian_mirror() {
  if [ -n "${ARCHAUDIT_DEBIAN_MIRROR:-}" ]; then echo "$ARCHAUDIT_DEBIAN_MIRROR"; return; fi
  local url
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
    grep -E '/debian/?$' | head -n1)
  [ -n "$url" ] || die "no Debian mirror in /etc/apt/sources.list*; set ARCHAUDIT_DEBIAN_MIRROR"
  echo "$url"
}

# Registers qemu-user for a foreign Debian arch. Prints why not on failure.
binfmt_ready() {
  local q entry
  q=$(qemu_name "$1")
  entry=/proc/sys/fs/binfmt_misc/qemu-$q
  if [ -f "$entry" ] && head -n1 "$entry" | grep -q enabled; then return 0; fi
  apt_install qemu-user-static binfmt-support 2>&1 || { echo "apt-get install qemu-user-static binfmt-support failed"; return 1; }
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>&1 || { echo "cannot mount binfmt_misc"; return 1; }
  fi
  update-binfmts --enable "qemu-$q" 2>&1 || { echo "update-binfmts --enable qemu-$q failed"; return 1; }
  if ! { [ -f "$entry" ] && head -n1 "$entry" | grep -q enabled; }; then
    echo "$entry is not enabled after registering"
    return 1
  fi
}

# -- the base image

recipe_hash() {
  printf 'suite=%s\nvariant=minbase\npackages=%s\narch=%s\nrecipe=%s\n' \
    "$SUITE" "$BASE_PACKAGES" "$1" "$RECIPE_VERSION" | sha256sum | cut -c1-16
}

# debootstrap a rootfs, then drop what an image never uses (apt caches, docs, translations).
make_rootfs_tar() {
  local arch=$1 tarball=$2 work
  work=$(mktemp -d "$IMAGES/.rootfs-$arch.XXXXXX")
  log "debootstrap $SUITE ($arch) from $(debian_mirror); log: $LOGS/debootstrap-$arch.log"
  debootstrap --arch="$arch" --variant=minbase --include="$BASE_PACKAGES" \
    "$SUITE" "$work/rootfs" "$(debian_mirror)" >"$LOGS/debootstrap-$arch.log" 2>&1 ||
    { tail -n5 "$LOGS/debootstrap-$arch.log" >&2; rm -rf "$work"; return 1; }
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/cache/apt/*.bin \
    "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* \
    "$work/rootfs"/usr/share/info/* "$work/rootfs"/usr/share/locale/* "$work/rootfs"/var/log/*.log \
    "$work/rootfs"/debootstrap
  # Written under a temporary name: an interrupted run never leaves a truncated cache entry.
  tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$work"
}

# Prints the local image name of the base for a platform, making and importing it when missing.
base_image() {
  local platform=$1 arch hash name tarball ctr mnt oci_arch variant=""
  arch=$(deb_arch "$platform")
  hash=$(recipe_hash "$arch")
  name=localhost/archaudit-base:$SUITE-$arch-$hash
  tarball=$IMAGES/base-$SUITE-$arch-$hash.tar
  if bh inspect --type image "$name" >/dev/null 2>&1; then echo "$name"; return; fi
  if [ ! -f "$tarball" ]; then
    local t0=$SECONDS
    make_rootfs_tar "$arch" "$tarball" || return 1
    fact "time base-rootfs $platform $((SECONDS - t0))"
  fi
  log "import $tarball as $name"
  local t0=$SECONDS
  oci_arch=$(echo "$platform" | cut -d/ -f2)
  variant=$(echo "$platform" | cut -s -d/ -f3)
  ctr=$(bh from --quiet scratch)
  mnt=$(bh mount "$ctr")
  tar --numeric-owner --xattrs -C "$mnt" -xf "$tarball"
  bh umount "$ctr" >/dev/null
  bh config --os linux --arch "$oci_arch" --variant "$variant" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 "$ctr"
  bh commit --quiet --rm "$ctr" "$name" >/dev/null
  fact "time base-import $platform $((SECONDS - t0))"
  echo "$name"
}

# -- the archaudit image

project_version() {
  python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml"
}

revision() {
  local rev
  rev=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null) || { echo unknown; return; }
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || rev=$rev-dirty
  echo "$rev"
}

build_one() {
  local platform=$1 base image t0
  image=localhost/$TAG-$(slug "$platform")
  base=$(base_image "$platform") || return 1
  log "build $image for $platform from $base; log: $LOGS/build-$(slug "$platform").log"
  t0=$SECONDS
  local ca=()
  # RUN steps reach PyPI through this machine's TLS trust (which may hold a proxy's CA): mount the
  # bundle for the build only, so no layer keeps it. Debian's pip reads exactly this path.
  [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  # --layers: the dependency layers are reused until pyproject.toml or constraints.txt change.
  bh bud --isolation chroot --layers --platform "$platform" --pull=never "${ca[@]}" \
    --build-arg PYTHON_IMAGE="$base" --build-arg VERSION="$(project_version)" \
    --build-arg REVISION="$(revision)" -t "$image" -f "$REPO/Dockerfile" "$REPO" \
    >"$LOGS/build-$(slug "$platform").log" 2>&1 ||
    { tail -n5 "$LOGS/build-$(slug "$platform").log" >&2; return 1; }
  fact "time build $platform $((SECONDS - t0))"
  t0=$SECONDS
  smoke_test "$platform" "$image"
  fact "time smoke-test $platform $((SECONDS - t0))"
}

# Runs the image's entrypoint as the image's own user: the version, and the operator's help.
smoke_test() {
  local platform=$1 image=$2 ctr user out
  user=$(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
  [ "$user" = "65532:65532" ] || { log "$image runs as '$user', not 65532:65532"; return 1; }
  # Working containers left by a failure are removed by the EXIT trap.
  ctr=$(bh_from "$platform" "$image")
  out=$(bh run --isolation chroot "$ctr" -- archaudit --version 2>&1) || { log "$out"; return 1; }
  fact "version $platform $out"
  local help
  help=$LOGS/run-help-$(slug "$platform").log
  # `run --help` imports the operator (kopf, kubernetes): proves the venv is whole on this platform.
  if ! bh run --isolation chroot "$ctr" -- archaudit run --help >"$help" 2>&1 || ! grep -q '^usage: archaudit run' "$help"; then
    tail -n5 "$help" >&2
    return 1
  fi
  out=$(bh run --isolation chroot "$ctr" -- id -u)
  [ "$out" = 65532 ] || { log "the entrypoint ran as uid $out"; return 1; }
  fact "uid $platform $out"
  bh rm "$ctr" >/dev/null
}

image_size() {
  local platform=$1 image=$2 ctr mnt size
  ctr=$(bh_from "$platform" "$image")
  mnt=$(bh mount "$ctr")
  size=$(du -sb "$mnt" | cut -f1)
  bh umount "$ctr" >/dev/null
  bh rm "$ctr" >/dev/null
  echo "$size"
}

# vfs stores every layer as a full copy (hundreds of MB), so each source change would leave gigabytes
# of stale build cache behind. Keep the untagged images the last build of each platform used or made
# (its log names every step's image) and drop the other untagged ones; tagged images stay.
prune_stale_layers() {
  local keep stale=() id name
  keep=$(grep -ohE '^--> (Using cache )?[0-9a-f]{11,64}' "$LOGS"/build-*.log 2>/dev/null | awk '{print $NF}' | sort -u)
  while read -r id name; do
    id=${id#sha256:}
    [ "$name" = "<none>:<none>" ] || continue
    grep -q "^${id:0:11}" <<<"$keep" || stale+=("$id")
  done < <(bh images -a --no-trunc --format '{{.ID}} {{.Name}}:{{.Tag}}')
  [ ${#stale[@]} -gt 0 ] || return 0
  log "removing ${#stale[@]} stale build-cache images"
  bh rmi -f "${stale[@]}" >/dev/null 2>&1 || log "some stale images stayed (in use?); the next run retries"
}

# -- main

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --platform) PLATFORMS+=("$2"); shift 2 ;;
      --push) PUSH=$2; shift 2 ;;
      --tag) TAG=$2; shift 2 ;;
      --result) RESULT=$2; shift 2 ;;
      --strict) STRICT=1; shift ;;
      -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
  done
  [ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(linux/amd64 linux/arm64 linux/arm/v7)
  [ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, buildah's vfs storage and binfmt_misc need it"
  [ -z "$RESULT" ] || : >"$RESULT"
  mkdir -p "$IMAGES" "$STORE_ROOT" "$RUNROOT" "$LOGS"
}

main() {
  local native platform arch why rc dest digestfile built=()
  parse_args "$@"
  apt_install buildah debootstrap
  # One build at a time per storage: the working containers of this run are all removed at exit.
  exec 9>"$CACHE/buildah/lock"
  flock 9
  trap 'bh rm --all >/dev/null 2>&1 || true' EXIT
  bh rm --all >/dev/null 2>&1 || true  # what a killed run left
  native=$(native_arch)
  for platform in "${PLATFORMS[@]}"; do
    arch=$(deb_arch "$platform") || die "unsupported platform $platform (linux/amd64, linux/arm64, linux/arm/v7)"
    if [ "$arch" != "$native" ]; then
      if ! why=$(binfmt_ready "$arch"); then
        why=$(echo "$why" | tr '\n' ' ')
        log "cannot build $platform: no qemu-user through binfmt_misc: $why"
        fact "failed $platform binfmt: $why"
        continue
      fi
    fi
    # A subshell with errexit: a failing step ends this platform's build, not the script (errexit is
    # off inside an `if` condition, so the function cannot be called there).
    set +e
    (build_one "$platform")
    rc=$?
    set -e
    if [ $rc -eq 0 ]; then
      built+=("$platform")
      fact "built $platform localhost/$TAG-$(slug "$platform")"
      fact "size $platform $(image_size "$platform" "localhost/$TAG-$(slug "$platform")")"
    else
      log "build for $platform failed (see $LOGS)"
      fact "failed $platform build: see $LOGS/build-$(slug "$platform").log"
      [ "$arch" != "$native" ] || die "the native platform $platform did not build"
    fi
  done
  [ ${#built[@]} -gt 0 ] || die "no platform built"
  [ $STRICT -eq 0 ] || [ ${#built[@]} -eq ${#PLATFORMS[@]} ] || die "--strict: built only ${built[*]}"

  # The tag itself: the one image, or a manifest list of all that built.
  # A list first: `rmi` of a list's name resolves to this host's instance and deletes that image.
  if ! bh manifest rm "localhost/$TAG" >/dev/null 2>&1; then
    bh rmi "localhost/$TAG" >/dev/null 2>&1 || true  # a single image's second name: only untagged
  fi
  if [ ${#built[@]} -eq 1 ]; then
    bh tag "localhost/$TAG-$(slug "${built[0]}")" "localhost/$TAG"
  else
    bh manifest create "localhost/$TAG" >/dev/null
    for platform in "${built[@]}"; do
      bh manifest add "localhost/$TAG" "containers-storage:localhost/$TAG-$(slug "$platform")" >/dev/null
    done
  fi
  log "built ${built[*]} as localhost/$TAG"
  prune_stale_layers

  if [ -n "$PUSH" ]; then
    dest=docker://$PUSH/$TAG
    digestfile=$(mktemp)
    if [ ${#built[@]} -eq 1 ]; then
      bh push --quiet --tls-verify=false --digestfile "$digestfile" "localhost/$TAG" "$dest"
    else
      bh manifest push --quiet --all --tls-verify=false --digestfile "$digestfile" "localhost/$TAG" "$dest"
    fi
    fact "pushed $PUSH/$TAG $(cat "$digestfile")"
    log "pushed $PUSH/$TAG $(cat "$digestfile")"
    rm -f "$digestfile"
  fi
}

# One line, read whole before it runs: editing this file during a build cannot derail the build.
main "$@"; exit
