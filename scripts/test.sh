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

# CI builds once from a clean checkout, so incremental-compilation data
# (1.5 GB here) would only take disk.
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=0

# The free disk space, before and after: a CI machine once ran out of disk
# while linking (the linker died of SIGBUS), which is hard to recognise
# without this line.
disk() { df -Pk . | awk -v when="$1" 'NR == 2 { printf "disk %s: %.1f GB free, target/ %s\n", when, $4 / 1048576, t }' t="$(du -sh target 2>/dev/null | cut -f1)"; }
disk "before the tests" >&2
trap 'disk "at exit" >&2' EXIT

scripts/deps.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/audit.sh
scripts/fuzz.sh --smoke
