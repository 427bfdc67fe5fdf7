#!/usr/bin/env bash
# KEDA's operator as the autoscaling bench's peer, built from the Go module proxy and run outside
# the cluster against the local plane.
#
#   hack/keda.sh build            build (or reuse) keda-operator and its CRDs; prints their directory
#   hack/keda.sh start DIR        apply the CRDs, start keda-operator with its state in DIR
#                                 (certificates, log, DIR/keda-operator.pid); waits until it serves
#   hack/keda.sh stop DIR         stop the keda-operator started in DIR, by its pid
#
# `go install pkg@version` is refused for KEDA (its go.mod has replace lines), so a wrapper module
# that copies them is generated into a temporary directory. The output lives outside the
# repository, next to the plane's binaries, keyed by KEDA's and Go's versions, published with an
# atomic rename and a `.complete` marker. keda-operator only activates (0 <-> 1) by itself; its
# 1 -> N needs the HPA and a metrics adapter that this plane cannot route to.
set -euo pipefail

KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
go_version=$(go env GOVERSION)
cache_root=${CONVEYOR_TESTBIN_CACHE:-$HOME/.cache/conveyor-testbin}
out="$cache_root/keda-$KEDA_VERSION-$go_version"

log() { printf 'keda: %s\n' "$*" >&2; }

build() {
  if [[ -f $out/.complete ]]; then
    echo "$out"
    return
  fi
  local started tmp mod up
  started=$(date +%s)
  mkdir -p "$cache_root"
  tmp=$(mktemp -d "$cache_root/.building-keda.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mod="$tmp/mod"
  mkdir -p "$mod"
  up=$(cd /tmp && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  printf 'module conveyor.invalid/testbin/keda\n\n%s\n%s\n\nrequire github.com/kedacore/keda/v2 %s\n\ntool github.com/kedacore/keda/v2/cmd/operator\n' \
    "$(grep -m1 '^go ' "$up")" "$(grep -m1 '^toolchain ' "$up" || true)" "$KEDA_VERSION" >"$mod/go.mod"
  # A dependency's replace and exclude lines are ignored by Go: copy KEDA's own.
  (cd "$mod" && go mod edit -json "$up" | python3 -c '
import json, sys
m = json.load(sys.stdin)
mv = lambda x: x["Path"] + ("@" + x["Version"] if x.get("Version") else "")
[print("-replace=%s=%s" % (mv(r["Old"]), mv(r["New"]))) for r in m.get("Replace") or []]
[print("-exclude=%s@%s" % (e["Path"], e["Version"])) for e in m.get("Exclude") or []]' |
    xargs -r go mod edit)
  (cd "$mod" && go mod tidy)
  log "building keda-operator $KEDA_VERSION (about 9 minutes on two cores)"
  (cd "$mod" && CGO_ENABLED=0 nice -n 10 go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
    -o "$tmp/keda-operator" github.com/kedacore/keda/v2/cmd/operator)
  mkdir -p "$tmp/crds"
  cp "$(cd "$mod" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)"/config/crd/bases/*.yaml "$tmp/crds/"
  chmod -R u+w "$tmp/crds"
  rm -rf "$mod"
  touch "$tmp/.complete"
  rm -rf "$out"
  mv -T "$tmp" "$out"
  trap - EXIT
  log "built in $(($(date +%s) - started)) s: $out"
  echo "$out"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 bin m_port h_port g_port
  bin=$(build)
  mkdir -p "$dir/certs" "$dir/no-custom-ca"
  kubectl apply --server-side -f "$bin/crds/" >/dev/null
  for _ in $(seq 30); do
    kubectl wait --for=condition=Established --timeout=30s \
      crd/scaledobjects.keda.sh crd/triggerauthentications.keda.sh >/dev/null 2>&1 && break
    sleep 1
  done
  kubectl create namespace keda --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$dir/certs/tls.key" -out "$dir/certs/tls.crt" 2>/dev/null
  cp "$dir/certs/tls.crt" "$dir/certs/ca.crt"
  m_port=$(free_port) h_port=$(free_port) g_port=$(free_port)
  echo "$m_port" >"$dir/metrics.port"
  # setsid execs keda-operator itself, so $! is its pid.
  WATCH_NAMESPACE="" KEDA_CLUSTER_OBJECT_NAMESPACE=keda POD_NAMESPACE=keda \
    setsid "$bin/keda-operator" --kubeconfig="$KUBECONFIG" \
    --leader-elect=false --enable-cert-rotation=false --cert-dir="$dir/certs" \
    --ca-dir="$dir/no-custom-ca" \
    --metrics-bind-address="127.0.0.1:$m_port" --health-probe-bind-address="127.0.0.1:$h_port" \
    --metrics-service-bind-address="127.0.0.1:$g_port" \
    --zap-log-level=info --zap-time-encoding=rfc3339nano ${KEDA_ARGS:-} \
    >"$dir/keda-operator.log" 2>&1 </dev/null &
  echo $! >"$dir/keda-operator.pid"
  for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$h_port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "keda-operator did not become ready; see $dir/keda-operator.log"
  return 1
}

stop() {
  local dir=$1 pid
  [[ -f $dir/keda-operator.pid ]] || return 0
  pid=$(<"$dir/keda-operator.pid")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  rm -f "$dir/keda-operator.pid"
}

case ${1:-} in
build) build ;;
start) start "${2:?a state directory}" ;;
stop) stop "${2:?a state directory}" ;;
*)
  sed -n '2,15p' "$0" >&2
  exit 2
  ;;
esac
