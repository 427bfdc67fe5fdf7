#!/usr/bin/env bash
# Prints Conveyor's measured figures, from the integration tests that measure them against the
# local plane and real brokers, NATS and RabbitMQ (started if needed): reconcile throughput for
# 200 Queues and the cost of one depth refresh of them, how fast Reachable follows a broker going
# away and coming back, how fast a Queue converges after an outage, and leader handover and
# shutdown times. Figures, not pass/fail thresholds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${CONVEYOR_WITH_PLANE:-} ]]; then
  exec "$here/with-plane.sh" "$here/$(basename "${BASH_SOURCE[0]}")" "$@"
fi

run() {
  cargo test --locked --quiet --test "$1" "$2" -- --exact --nocapture 2>&1 | grep -E "$3" || {
    echo "bench: $1::$2 printed no figure" >&2
    return 1
  }
}
echo "== Conveyor figures ($(nproc) cores) =="
for engine in on_nats on_rabbitmq; do
  run streams "two_hundred_queues_applied_at_once_all_become_ready::$engine" "Queues applied at once|depth refresh|full check"
  run streams "a_queue_created_while_the_broker_is_down_converges_when_it_returns::$engine" "became Ready"
done
run broker_external external_broker_follows_the_server_going_away_and_coming_back "Reachable went False"
run broker_rabbitmq an_external_rabbitmq_reports_itself_and_follows_the_broker "Reachable=False"
run rabbitmq_config the_rendered_configuration_boots_a_real_node "booted in"
run operator_process exactly_one_of_two_operators_reconciles_and_the_standby_takes_over "took over"
run operator_process operator_becomes_ready_serves_metrics_and_exits_cleanly_on_sigterm "after SIGTERM"
echo "(hack/scale.sh and hack/chaos.sh run the 10,000-object scale bench and the 20-trial chaos bench)"
