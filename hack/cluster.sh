#!/usr/bin/env bash
# Conveyor's local test plane: etcd, kube-apiserver (TLS, RBAC, service-account signing),
# kube-controller-manager, kube-scheduler, kwok with fake nodes, and nats-server with JetStream,
# all on 127.0.0.1 and free ports, all built by hack/testbin.sh.
#
#   hack/cluster.sh up       start everything, wait until it is ready, write .cluster/env
#   hack/cluster.sh down     stop exactly what `up` started (by pid) and remove its state
#   hack/cluster.sh status   say what is running
#
# `source .cluster/env` afterwards gives KUBECONFIG, CONVEYOR_TEST_NATS_URL and a PATH with kubectl.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${CONVEYOR_CLUSTER_DIR:-$root/.cluster}
nodes=${CONVEYOR_CLUSTER_NODES:-3}

log() { printf 'cluster: %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME BINARY ARGS...: runs one component in its own session, logs to $state/logs/NAME.log
start() {
  local name=$1
  shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name.pid"
  echo "$1" >"$state/pids/$name.exe"
}

# alive NAME: the recorded pid still runs the binary it was started with (a reused pid is not ours)
alive() {
  local pidf=$state/pids/$1.pid exe
  [[ -f $pidf ]] || return 1
  local pid
  pid=$(<"$pidf")
  exe=$(<"$state/pids/$1.exe")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1 | grep -qxF "$exe"
}

fail() {
  local name=$1
  shift
  log "$name failed: $*"
  if [[ -f $state/logs/$name.log ]]; then
    log "last lines of $state/logs/$name.log:"
    tail -n 40 "$state/logs/$name.log" >&2
  fi
  down >/dev/null 2>&1 || true
  exit 1
}

# wait_for NAME SECONDS COMMAND...: retries COMMAND until it succeeds; fails with NAME's log tail
wait_for() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name" "the process exited"
    ((SECONDS < deadline)) || fail "$name" "not ready after ${secs}s"
    sleep 0.2
  done
}

# client_cert FILE COMMON_NAME [ORGANISATION]: a client certificate signed by the test CA
client_cert() {
  local name=$1 subj="/CN=$2"
  [[ -n ${3:-} ]] && subj="/O=$3/CN=$2"
  openssl genrsa -out "$name.key" 2048 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >client.ext
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile client.ext -out "$name.crt" 2>/dev/null
}

certs() {
  local d=$state/pki
  mkdir -p "$d"
  (
    cd "$d"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -days 30 -subj "/CN=conveyor-test-ca" -out ca.crt 2>/dev/null
    # serving certificate of the apiserver
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    client_cert admin conveyor-admin system:masters
    client_cert controller-manager system:kube-controller-manager
    client_cert scheduler system:kube-scheduler
    client_cert kwok conveyor-kwok system:masters
    # service-account token signing
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

kubeconfig() {
  local name=$1 server=$2
  cat >"$state/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: conveyor-test
  cluster:
    server: $server
    certificate-authority: $state/pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $state/pki/$name.crt
    client-key: $state/pki/$name.key
contexts:
- name: conveyor-test
  context: {cluster: conveyor-test, user: $name}
current-context: conveyor-test
EOF
}

node_manifest() {
  local i
  for ((i = 0; i < nodes; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: zone-$((i % 3))
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
}

# A default StorageClass without a provisioner, and volumes for it, so that the claims of
# managed brokers bind and their pods get scheduled (kwok never mounts them).
storage_manifest() {
  cat <<EOF
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
  local i
  for ((i = 0; i < 12; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: standard-$i}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /nonexistent/conveyor-plane/standard-$i}
EOF
  done
}

up() {
  if [[ -f $state/env ]] && alive kube-apiserver; then
    log "already up ($state/env)"
    return
  fi
  [[ -d $state ]] && down >/dev/null 2>&1 || true
  local started=$SECONDS
  local bin
  bin=$("$root/hack/testbin.sh")
  mkdir -p "$state/pids" "$state/logs"
  local shm=/dev/shm
  [[ -w $shm ]] || shm=$state
  local data
  data=$(mktemp -d "$shm/conveyor-etcd.XXXXXX")
  echo "$data" >"$state/etcd-data-dir"
  local nats_store=$state/nats

  local etcd_port etcd_peer api_port kcm_port sched_port kwok_port nats_port nats_http
  etcd_port=$(free_port) etcd_peer=$(free_port) api_port=$(free_port) kcm_port=$(free_port)
  sched_port=$(free_port) kwok_port=$(free_port) nats_port=$(free_port) nats_http=$(free_port)
  local server=https://127.0.0.1:$api_port

  certs
  local p=$state/pki
  for n in admin controller-manager scheduler kwok; do kubeconfig "$n" "$server"; done

  start etcd "$bin/etcd" --name conveyor --data-dir "$data" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "conveyor=http://127.0.0.1:$etcd_peer" --log-level warn
  start nats-server "$bin/nats-server" -js -a 127.0.0.1 -p "$nats_port" -m "$nats_http" -sd "$nats_store" \
    -n conveyor-test
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$bin/kube-apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$api_port" --endpoint-reconciler-type=none --authorization-mode=Node,RBAC \
    --etcd-servers="http://127.0.0.1:$etcd_port" --client-ca-file="$p/ca.crt" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,LimitRanger,DefaultStorageClass,ResourceQuota,PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy
  wait_for kube-apiserver 90 curl -fsS --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" \
    "$server/readyz"

  # kwok heartbeats for the fake nodes; on a loaded two-core machine a heartbeat can come later
  # than the default grace period, and the nodes (and their pods) would turn NotReady mid-test.
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
    --use-service-account-credentials --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --node-monitor-grace-period=10m

  cat >"$state/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $state/scheduler.kubeconfig}
leaderElection: {leaderElect: false}
EOF
  start kube-scheduler "$bin/kube-scheduler" --config="$state/scheduler.yaml" \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" --authorization-kubeconfig="$state/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port"

  start kwok "$bin/kwok" --kubeconfig="$state/kwok.kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom \
    --cidr=10.244.0.0/16 --node-ip=10.250.0.1 --server-address="127.0.0.1:$kwok_port"

  local kc=("$bin/kubectl" --kubeconfig="$state/admin.kubeconfig")
  { node_manifest; storage_manifest; } | "${kc[@]}" apply -f - >/dev/null ||
    fail kube-apiserver "creating the fake nodes and volumes"
  wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
  wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$sched_port/healthz"
  wait_for kwok 90 "${kc[@]}" wait node --all --for=condition=Ready --timeout=1s
  # pods need the default service account, which the controller-manager creates
  wait_for kube-controller-manager 60 "${kc[@]}" get serviceaccount default -n default
  wait_for nats-server 30 curl -fsS "http://127.0.0.1:$nats_http/healthz?js-enabled-only=true"

  cat >"$state/env" <<EOF
# Written by hack/cluster.sh up; source it to reach Conveyor's local test plane.
export KUBECONFIG=$state/admin.kubeconfig
export CONVEYOR_TEST_NATS_URL=nats://127.0.0.1:$nats_port
export CONVEYOR_TEST_NATS_MONITOR_URL=http://127.0.0.1:$nats_http
export CONVEYOR_CLUSTER_DIR=$state
export CONVEYOR_TESTBIN=$bin
export PATH=$bin:\$PATH
EOF
  log "up in $((SECONDS - started))s: apiserver $server, nats nats://127.0.0.1:$nats_port; source $state/env"
}

components=(conveyor kwok kube-scheduler kube-controller-manager kube-apiserver nats-server etcd)

down() {
  [[ -d $state ]] || { log "nothing to stop"; return; }
  local name pid
  for name in "${components[@]}"; do
    alive "$name" || continue
    pid=$(<"$state/pids/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
    alive "$name" && kill -KILL "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  done
  if [[ -f $state/etcd-data-dir ]]; then
    local data
    data=$(<"$state/etcd-data-dir")
    [[ $data == */conveyor-etcd.* ]] && rm -rf "$data"
  fi
  rm -rf "$state"
  log "down"
}

status() {
  [[ -d $state ]] || { echo "not running"; return 1; }
  local name rc=0
  for name in "${components[@]}"; do
    if alive "$name"; then
      echo "$name: running (pid $(<"$state/pids/$name.pid"))"
    elif [[ $name == conveyor ]]; then
      echo "$name: not running (started only by hack/demo.sh)"
    else
      echo "$name: stopped"
      rc=1
    fi
  done
  return $rc
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
