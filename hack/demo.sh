#!/usr/bin/env bash
# Conveyor's main job, locally: bring up the control plane, NATS and RabbitMQ, install the CRDs, run the
# operator, apply the order-processing example and show what Conveyor reports about it.
# Everything keeps running afterwards; `hack/cluster.sh down` stops all of it (the operator too).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

hack/prereqs.sh
hack/cluster.sh up
# shellcheck source=/dev/null
source .cluster/env

cargo build --locked --quiet
bin=$root/target/debug/conveyor
"$bin" crds | kubectl apply --server-side --field-manager=conveyor-demo -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/brokers.conveyor.dev crd/queues.conveyor.dev \
  crd/topics.conveyor.dev crd/eventsubscriptions.conveyor.dev >/dev/null
kubectl get namespace conveyor-system >/dev/null 2>&1 || kubectl create namespace conveyor-system >/dev/null

pids=$CONVEYOR_CLUSTER_DIR/pids
if [[ -f $pids/conveyor.pid ]] && kill -0 "$(<"$pids/conveyor.pid")" 2>/dev/null; then
  echo "demo: the operator is already running (pid $(<"$pids/conveyor.pid"))"
  port=$(<"$CONVEYOR_CLUSTER_DIR/conveyor.port")
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # The operator runs outside the cluster here, so it may reach the plane's NATS on loopback.
  setsid "$bin" run --probe-addr "127.0.0.1:$port" --lease-namespace conveyor-system \
    --allowed-broker-destinations 127.0.0.1/32 \
    >"$CONVEYOR_CLUSTER_DIR/logs/conveyor.log" 2>&1 </dev/null &
  echo $! >"$pids/conveyor.pid"
  echo "$bin" >"$pids/conveyor.exe"
  echo "$port" >"$CONVEYOR_CLUSTER_DIR/conveyor.port"
fi
for _ in $(seq 600); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || {
  echo "demo: the operator did not become ready; its log:" >&2
  tail -n 30 "$CONVEYOR_CLUSTER_DIR/logs/conveyor.log" >&2
  exit 1
}
echo "demo: operator ready (probes and metrics on http://127.0.0.1:$port)"

kubectl apply -f examples/order-processing.yaml
sed "s|\${NATS_URL}|$CONVEYOR_TEST_NATS_URL|" examples/local-broker.yaml | kubectl apply -f -
sed -e "s|\${RABBITMQ_AMQP_URL}|$CONVEYOR_TEST_RABBITMQ_AMQP_URL|" \
  -e "s|\${RABBITMQ_MANAGEMENT_URL}|$CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL|" \
  -e "s|\${RABBITMQ_USER}|$CONVEYOR_TEST_RABBITMQ_USER|" \
  -e "s|\${RABBITMQ_PASSWORD}|$CONVEYOR_TEST_RABBITMQ_PASSWORD|" \
  examples/local-rabbitmq-broker.yaml | kubectl apply -f -
kubectl wait --for=condition=Ready -n shop-local broker/local topic/orders queue/invoices --timeout=60s >/dev/null
kubectl wait --for=condition=Ready -n shop-rabbitmq broker/local topic/orders queue/invoices --timeout=60s >/dev/null
kubectl wait --for=condition=Ready -n shop broker/events --timeout=120s >/dev/null
kubectl wait --for=jsonpath='{.status.observedGeneration}'=1 -n shop \
  topic/orders eventsubscription/payment eventsubscription/inventory eventsubscription/shipping \
  --timeout=60s >/dev/null
echo
kubectl get conveyor -n shop -o wide
echo
kubectl get conveyor -n shop-local -o wide
echo
kubectl get conveyor -n shop-rabbitmq -o wide
cat <<MSG

The managed Broker shop/events runs three NATS servers (kwok keeps their pods Ready without
running them, so the operator cannot reach it: Reachable=False). shop-local/local is the
plane's real nats-server: its Topic and Queue are real JetStream streams
(topic_shop-local_orders, queue_shop-local_invoices). shop-rabbitmq/local is the plane's real
rabbitmq-server: its Topic is a topic exchange and its Queue a quorum queue.
The operator keeps running; its log is $CONVEYOR_CLUSTER_DIR/logs/conveyor.log.
  source .cluster/env; kubectl describe topic orders -n shop    # conditions in full
  hack/cluster.sh down                                            # stop everything
MSG
