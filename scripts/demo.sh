#!/usr/bin/env bash
# The main job on its embedded defaults: analyze a real PostgreSQL 15 log
# shipped with the repo (tests/fixtures/pg15, made by tests/fixtures/generate.sh).
# Extra arguments go to `querywatch analyze`, e.g. `--format json`, or other
# paths to analyze instead of the shipped log.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh >/dev/null   # libclang-dev for the build (and the test tools)
cargo build --release --locked --quiet
# Any argument naming an existing file, directory or glob means "analyze
# that"; otherwise the shipped log is analyzed.
for arg in "$@"; do
    if [[ -e "$arg" || "$arg" == *[*?[]* ]]; then
        exec target/release/querywatch analyze "$@"
    fi
done
exec target/release/querywatch analyze "$@" tests/fixtures/pg15/postgresql.log
