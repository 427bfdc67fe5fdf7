#!/usr/bin/env bash
# Runs a command against the local plane: installs what is missing, starts the plane unless it
# runs already (and then stops it again afterwards), and runs the command with .cluster/env
# sourced and CONVEYOR_REQUIRE_CLUSTER=1, so that no test or bench skips.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

hack/prereqs.sh
started=
if [[ ! -f .cluster/env ]] || ! hack/cluster.sh status >/dev/null 2>&1; then
  hack/cluster.sh up
  started=1
fi
cleanup() {
  if [[ -n $started ]]; then hack/cluster.sh down; fi
}
trap cleanup EXIT
# shellcheck source=/dev/null
source .cluster/env
export CONVEYOR_REQUIRE_CLUSTER=1 CONVEYOR_WITH_PLANE=1
"$@"
