#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
# formatting, lints, then unit, property and integration tests. The
# integration tests start throwaway PostgreSQL clusters, so the system
# packages come first (scripts/deps.sh installs them when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
