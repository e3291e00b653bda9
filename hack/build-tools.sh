#!/usr/bin/env bash
# Build the developer tools the tests run for real (today: actionlint, which lints the GitHub
# workflows), from Go modules, pinned, cached like build-cluster-bins.sh.
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

build_actionlint
echo "$BIN"
