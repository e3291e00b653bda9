#!/usr/bin/env bash
# Build the real control-plane binaries the tests and `make demo` run, from Go modules.
#
# Why: this machine has no Docker and no release downloads, so kind/envtest tarballs are out; the
# Go module proxy is reachable, so we build kube-apiserver & co. the way envtest's binaries are made.
# k8s.io/kubernetes pins its ~30 staging modules at v0.0.0 with `replace => ./staging/...`, which a
# plain `go install` refuses; a throwaway wrapper module maps each to its published v0.X.Y instead
# (kubernetes issue 79384). The staging list is read from the go.mod the proxy serves, not hard-coded.
#
# Output: ${ARCHAUDIT_CACHE:-~/.cache/archaudit}/bin/<pins>/ ; prints that directory on the last line.
# Idempotent: a binary already built for the same pins is not rebuilt.
#
# Measured on the `polyglot` machine (2 cores, 24 GiB, Go 1.26.8), cold (empty GOCACHE), under
# `/usr/bin/time -v`, 2026-11-28:
#   everything: 13 min 56 s wall (user 1167 s + sys 260 s, 170 % CPU); peak RSS 1.9 GB (1 910 952 kB,
#   the largest single compile/link process), so the default -p is fine on this box. Per step:
#   etcd 2 min 10 s, kwok 2 min 24 s, helm 2 min 19 s, Kubernetes (4 binaries) 7 min 3 s.
#   Leaves ~4.2 GB in GOCACHE and 415 MB of binaries. Warm (all cached): < 1 s.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

CACHE=${ARCHAUDIT_CACHE:-$HOME/.cache/archaudit}
# RECIPE changes when the build flags change (not only the pins), so a cache never serves stale binaries.
RECIPE=2
PINS="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_r${RECIPE}"
BIN="$CACHE/bin/$PINS"
WORK="$CACHE/build"
mkdir -p "$BIN" "$WORK"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
GOBUILD=(go build -trimpath)
[ -n "${GO_BUILD_PARALLEL:-}" ] && GOBUILD+=(-p "$GO_BUILD_PARALLEL")

log() { printf '[build-cluster-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { [ -x "$BIN/$1" ]; }

build_kubernetes() {
  local want=() b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do have "$b" || want+=("$b"); done
  [ ${#want[@]} -eq 0 ] && { log "kubernetes $K8S_VERSION: cached"; return; }
  log "kubernetes $K8S_VERSION: building ${want[*]} (10-25 min cold on 2 cores)"
  local dir="$WORK/kubernetes-$K8S_VERSION" minor staging gomod
  mkdir -p "$dir"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  staging=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u)
  [ -n "$staging" ] || { log "no staging replaces found in $gomod"; exit 1; }
  {
    echo "module archaudit.local/k8s-build"
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo "require k8s.io/kubernetes $K8S_VERSION"
    for m in $staging; do echo "replace $m => $m v0.${minor}.${K8S_VERSION##*.}"; done
  } >"$dir/go.mod"
  log "wrapper module with $(echo "$staging" | wc -l) staging replaces: $dir/go.mod"
  local pkgs=() ver="k8s.io/component-base/version" cver="k8s.io/client-go/pkg/version" ld=""
  for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  for p in "$ver" "$cver"; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && go get "${pkgs[@]/%/@$K8S_VERSION}" >/dev/null 2>&1 || go mod download)
  (cd "$dir" && "${GOBUILD[@]}" -tags=selinux,notest,grpcnotrace -ldflags "-s -w $ld" -o "$BIN/" "${pkgs[@]}")
  "$BIN/kube-apiserver" --version >&2
}

build_etcd() {
  have etcd && { log "etcd $ETCD_VERSION: cached"; return; }
  log "etcd $ETCD_VERSION: building"
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module archaudit.local/etcd-build\n\ngo 1.24\n' >"$dir/go.mod"
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1)
  (cd "$dir" && "${GOBUILD[@]}" -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  "$BIN/etcd" --version | head -1 >&2
}

build_kwok() {
  if ! have kwok; then
    log "kwok $KWOK_VERSION: building"
    GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  else
    log "kwok $KWOK_VERSION: cached"
  fi
  # v0.8.0 ships no built-in stages out of cluster: assemble the ones we need from the module source
  # (kustomize/stage/<kind>/<set>/<stage>.yaml). Regenerated on every run (cheap), so a change of this
  # list or of the pin never leaves a stale file behind; a missing stage is an error, not a skip.
  local src f stages=(
    node/fast/node-initialize.yaml                               # conditions Ready, addresses, nodeInfo
    node/heartbeat-with-lease/node-heartbeat-with-lease.yaml     # status refresh; kwok renews the Lease
    pod/fast/pod-ready.yaml                                      # scheduled pod -> Running, IP, Ready
    pod/fast/pod-complete.yaml                                   # Job pods -> Succeeded
    pod/fast/pod-delete.yaml                                     # deletionTimestamp -> gone
  )
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  : >"$BIN/kwok-stages.yaml.tmp"
  for f in "${stages[@]}"; do
    [ -f "$src/kustomize/stage/$f" ] || { log "kwok stage $f not found in $src/kustomize/stage"; exit 1; }
    { echo "---"; kwok_stage "$src/kustomize/stage/$f"; echo; } >>"$BIN/kwok-stages.yaml.tmp"
  done
  mv "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"
}

# One change to kwok's stages: a Job pod labelled archaudit.test/kubelet=harness is left Running, not
# completed, because a test plays its kubelet (runs its command for real, then reports the exit code).
# That is how `helm uninstall`'s pre-delete hook Job is run by the e2e tests.
kwok_stage() {
  if [ "$(basename "$1")" = pod-complete.yaml ]; then
    python3 - "$1" <<'PY'
import sys
text = open(sys.argv[1]).read()
anchor = "    matchExpressions:\n"
assert text.count(anchor) == 1, "pod-complete.yaml: matchExpressions not found once"
skip = (
    "    - key: '.metadata.labels.[\"archaudit.test/kubelet\"]'\n"
    "      operator: 'DoesNotExist'\n"
)
sys.stdout.write(text.replace(anchor, anchor + skip))
PY
  else
    cat "$1"
  fi
}

build_helm() {
  have helm && { log "helm $HELM_VERSION: cached"; return; }
  log "helm $HELM_VERSION: building"
  # Offline `helm template`/`lint` assume this Kubernetes version (helm's Makefile stamps it the same
  # way); unstamped, Go-built helm says v1.20 and the chart's kubeVersion check refuses to render.
  local minor ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
  done
  GOBIN="$BIN" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

start=$(date +%s)
build_etcd
build_kwok
build_helm
build_kubernetes
log "done in $(( $(date +%s) - start ))s: $BIN"
echo "$BIN"
