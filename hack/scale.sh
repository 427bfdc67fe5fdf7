#!/usr/bin/env bash
# Runs the scale bench (benches/scale.rs) against the local plane, started here if it is not running,
# and prints its figures. Settings come from the environment (see benches/scale.rs).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

hack/prereqs.sh
started=
if ! hack/cluster.sh status >/dev/null 2>&1; then
  hack/cluster.sh up
  started=1
fi
cleanup() {
  if [[ -n $started ]]; then hack/cluster.sh down; fi
}
trap cleanup EXIT
# shellcheck source=/dev/null
source .cluster/env
export CONVEYOR_REQUIRE_CLUSTER=1
cargo bench --locked --bench scale
