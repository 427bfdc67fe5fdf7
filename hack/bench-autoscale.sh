#!/usr/bin/env bash
# The autoscaling bench (benches/autoscale.rs) against the local plane, which is started if
# needed: Conveyor and then KEDA (built by hack/keda.sh, about 9 minutes the first time) on the
# same nats-server and consumers. It prints its figures. CONVEYOR_AUTOSCALE_* set the sizes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONVEYOR_KEDA_BIN=${CONVEYOR_KEDA_BIN:-$("$here/keda.sh" build)}
export CONVEYOR_KEDA_BIN
CONVEYOR_LOG="${CONVEYOR_LOG:-info}" exec "$here/with-plane.sh" cargo bench --locked --bench autoscale
