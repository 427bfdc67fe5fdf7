#!/usr/bin/env bash
# The scale bench (benches/scale.rs) against the local plane, which is started if needed; it
# prints its figures. Settings come from the environment (see benches/scale.rs).
CONVEYOR_LOG="${CONVEYOR_LOG:-info}" exec "$(dirname "${BASH_SOURCE[0]}")/with-plane.sh" cargo bench --locked --bench scale
