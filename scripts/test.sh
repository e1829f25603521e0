#!/usr/bin/env bash
# The project's test command (the README's quick start runs this).
#
# Environment knobs:
#   SIM_SEEDS=N        seeds for the randomized simulator test (default 500)
#   SIM_SEED=S         replay one simulator seed (see the failure message)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features --release "$@"
