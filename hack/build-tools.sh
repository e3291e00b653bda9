#!/usr/bin/env bash
# Build the developer tools the tests run for real (actionlint, which lints the GitHub workflows; loadgen,
# the benchmarks' load client, from hack/loadgen), from Go modules, pinned, cached like
# build-cluster-bins.sh.
#
# Why from Go modules: this machine has no release downloads; the Go module proxy is reachable.
#
# Output: ${ARCHAUDIT_CACHE:-~/.cache/archaudit}/bin/tools/ ; prints that directory on the last line.
# Idempotent: a tool already built at the pinned version is not rebuilt (warm run < 1 s).
set -euo pipefail

ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}

CACHE=${ARCHAUDIT_CACHE:-$HOME/.cache/archaudit}
BIN="$CACHE/bin/tools"
mkdir -p "$BIN"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The version is part of a stamp file beside the binary, so bumping the pin rebuilds.
build_actionlint() {
  local stamp="$BIN/.actionlint-$ACTIONLINT_VERSION"
  if [ -x "$BIN/actionlint" ] && [ -e "$stamp" ]; then
    log "actionlint $ACTIONLINT_VERSION: cached"
    return
  fi
  log "actionlint $ACTIONLINT_VERSION: building"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  rm -f "$BIN"/.actionlint-*
  touch "$stamp"
  "$BIN/actionlint" -version | head -1 >&2
}

# Our own source: the stamp is its hash, so an edit rebuilds and nothing else does.
build_loadgen() {
  local src hash stamp
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/loadgen"
  hash=$(cat "$src/go.mod" "$src/main.go" | sha256sum | cut -c1-16)
  stamp="$BIN/.loadgen-$hash"
  if [ -x "$BIN/loadgen" ] && [ -e "$stamp" ]; then
    log "loadgen $hash: cached"
    return
  fi
  log "loadgen $hash: building"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$BIN/loadgen" .)
  rm -f "$BIN"/.loadgen-*
  touch "$stamp"
}

build_actionlint
build_loadgen
echo "$BIN"
