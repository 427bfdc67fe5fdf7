#!/usr/bin/env bash
# Conveyor's whole test suite against the local control plane and NATS.
#
# Installs what is missing, builds the plane's binaries (cached), starts the plane unless
# .cluster/env says it is running, runs every test with CONVEYOR_REQUIRE_CLUSTER=1 (so nothing
# skips), and stops the plane again if this script started it. Extra arguments go to cargo test.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${CONVEYOR_WITH_PLANE:-} ]]; then
  exec "$here/with-plane.sh" "$here/$(basename "${BASH_SOURCE[0]}")" "$@"
fi

# An operator left running by hack/demo.sh watches every namespace and would act on the tests'
# objects too; each test runs its own.
if [[ -f $CONVEYOR_CLUSTER_DIR/pids/conveyor.pid ]]; then
  pid=$(<"$CONVEYOR_CLUSTER_DIR/pids/conveyor.pid")
  if kill -0 "$pid" 2>/dev/null; then
    echo "test: stopping the demo operator (pid $pid) so that it does not act on the tests' objects"
    kill "$pid"
  fi
  rm -f "$CONVEYOR_CLUSTER_DIR/pids/conveyor.pid"
fi
export CONVEYOR_REQUIRE_CLUSTER=1
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
