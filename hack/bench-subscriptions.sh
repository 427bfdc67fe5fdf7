#!/usr/bin/env bash
# The subscriptions bench (benches/subscription_scale.rs) against the local plane, which is started
# if needed; it prints its figures. CONVEYOR_SUBS_ENGINE=rabbitmq runs it on RabbitMQ.
CONVEYOR_LOG="${CONVEYOR_LOG:-info}" exec "$(dirname "${BASH_SOURCE[0]}")/with-plane.sh" cargo bench --locked --bench subscription_scale
