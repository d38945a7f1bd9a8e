#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
# formatting, lints, then unit, property and integration tests, the
# supply-chain checks (cargo-deny) and a fuzz smoke run (every fuzz target
# 10 s from its seeds). The integration tests start throwaway PostgreSQL
# clusters, so the system packages come first (scripts/deps.sh installs
# them when run as root); cargo-deny and cargo-fuzz are installed into
# target/tools the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/audit.sh
scripts/fuzz.sh --smoke
