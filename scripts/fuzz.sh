#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets in fuzz/ and runs each one in turn
# (one fuzz process at a time), then prints executions per target.
#
#   scripts/fuzz.sh --smoke            # 10 s per target, unoptimised build (CI)
#   scripts/fuzz.sh                    # 10 minutes (or 10 M runs) per target
#   scripts/fuzz.sh --minutes 3 mask   # some targets, N minutes each
#   scripts/fuzz.sh --seeds            # regenerate fuzz/corpus/*/seed-*
#   scripts/fuzz.sh --asan ...         # AddressSanitizer (nightly toolchain)
#
# Runs on the stable toolchain: without a sanitizer (`--sanitizer none`)
# cargo-fuzz passes rustc only stable `-C` flags (sancov passes and LLVM
# options), so neither nightly nor RUSTC_BOOTSTRAP is needed. Every project
# crate forbids `unsafe`, so AddressSanitizer adds little; debug assertions
# (integer overflow, slice bounds) are on in every mode.
#
# New inputs go to fuzz/work/<target> (not committed); the committed seeds
# in fuzz/corpus/<target> are read only. A crash is saved under
# fuzz/artifacts/<target>/ and makes the script exit non-zero after the
# other targets ran.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(stderr_prefix csvlog jsonlog mask plan otlp_metrics_decode otlp_logs_decode otlp_roundtrip otlp_json config)
seconds=600
# The long runs stop at 10 minutes or 10 M executions, whichever comes first.
runs=10000000
sanitizer=none
seeds=0
# The smoke run builds without optimisation (`--dev`): the first build
# of the fuzz workspace is most of its time, and ten seconds of fuzzing
# need no speed.
dev=0
chosen=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) seconds=10; runs=-1; dev=1 ;;
        --minutes) seconds=$(( $2 * 60 )); shift ;;
        --seeds) seeds=1 ;;
        --asan) sanitizer=address ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) chosen+=("$1") ;;
    esac
    shift
done
[[ ${#chosen[@]} -gt 0 ]] && TARGETS=("${chosen[@]}")

# cargo-fuzz from crates.io when it is missing, installed inside the
# repository's target/ (nothing outside the checkout is written).
export PATH="$PWD/target/tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --version 0.13.2 --locked --root "$PWD/target/tools"
fi
if [[ $sanitizer == address ]]; then
    export RUSTUP_TOOLCHAIN=nightly   # -Zsanitizer needs it
fi
# Inside the worktree's target/, under the host triple, so the fuzz build
# never clobbers the workspace's own artifacts.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
triple=$(rustc -vV | sed -n 's/^host: //p')
flags=(--sanitizer "$sanitizer" --debug-assertions)
[[ $dev == 1 ]] && flags+=(--dev)

cd fuzz
cargo fuzz build "${flags[@]}"

if [[ $seeds == 1 ]]; then
    "$CARGO_TARGET_DIR/$triple/release/seeds"
    echo "seed corpora written to fuzz/corpus/"
    exit 0
fi

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "work/$t" "corpus/$t"
    log="work/$t.log"
    echo "== $t: ${seconds}s"
    start=$(date +%s)
    # One process (no -jobs/-workers: libFuzzer's default is a single
    # in-process fuzzer). -timeout: an input slower than 10 s is a finding.
    if ! cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -runs="$runs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        failed+=("$t")
        tail -n 40 "$log"
    fi
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -n 1 || true)
    line=$(printf '%-20s %6ss %12s execs %8s exec/s  %s' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "${corp:-}")
    summary+=("$line")
    echo "$line"
done

echo
echo "target               time          executions      rate  corpus"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
