#!/usr/bin/env bash
# The chaos bench (benches/chaos.rs) against the local plane, which is started if needed; it
# prints each trial and the totals. Settings come from the environment (see benches/chaos.rs).
exec "$(dirname "${BASH_SOURCE[0]}")/with-plane.sh" cargo bench --locked --bench chaos
