#!/usr/bin/env bash
# Install the Debian packages the tests run for real: docker-registry (CNCF distribution 2.8),
# promtool (prometheus), shellcheck. Only what is missing; quiet when everything is there.
set -euo pipefail
need=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)  # actionlint checks workflow run: scripts with it
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "[install-deps] apt-get install ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start their own services; the tests start private instances on free ports.
for svc in docker-registry prometheus prometheus-node-exporter; do
  $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
