#!/usr/bin/env bash
# The main job on its embedded defaults: analyze a real PostgreSQL 15 log
# shipped with the repo (tests/fixtures/pg15, made by tests/fixtures/generate.sh).
# Extra arguments go to `querywatch analyze`, e.g. `--format json`, or other
# paths to analyze instead of the shipped log.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --build-only   # libclang-dev, which pg_query's build needs
cargo build --release --locked --quiet
# Any argument naming an existing file, directory or glob means "analyze
# that"; otherwise the shipped log is analyzed.
for arg in "$@"; do
    if [[ -e "$arg" || "$arg" == *[*?[]* ]]; then
        exec target/release/querywatch analyze "$@"
    fi
done
# The shipped log was written with the log_line_prefix of the generator's config.
prefix=$(sed -n "s/^log_line_prefix = '\(.*\)'.*/\1/p" tests/fixtures/workload/postgresql.conf)
exec target/release/querywatch analyze --prefix "$prefix" "$@" tests/fixtures/pg15/postgresql.log
