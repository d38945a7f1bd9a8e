#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (configuration: deny.toml).
#
#   scripts/audit.sh            bans, licenses, sources; advisories if the
#                               RustSec database can be had
#   QUERYWATCH_AUDIT_STRICT=1   an advisory database that cannot be had
#                               fails the run instead of being reported
#
# bans, licenses and sources need nothing but Cargo.lock and the crates'
# manifests (offline). advisories need the RustSec advisory database, a git
# repository on GitHub: cargo-deny fetches it into target/advisory-dbs
# (deny.toml's db-path).
# Where GitHub cannot be reached and no copy is there, the advisories are
# NOT checked, and this script says so on a line of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-deny from crates.io when it is missing, installed inside the
# repository's target/ (nothing outside the checkout is written).
export PATH="$PWD/target/tools/bin:$PATH"
if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "audit: installing cargo-deny into target/tools (cargo install --locked)" >&2
    cargo install cargo-deny --version 0.20.2 --locked --root "$PWD/target/tools"
fi
cargo deny --version

# cargo-deny reads `cargo metadata` for every platform, so the manifests
# of crates only other platforms build (web-time, anstyle-wincon, …) must
# be downloaded too: a build fetches only this platform's, and on a fresh
# machine the offline check then failed with "failed to download".
cargo fetch --locked

status=0
cargo deny --offline --log-level error check bans licenses sources || status=$?

db_dir="$PWD/target/advisory-dbs"
if timeout 60 cargo deny --log-level error fetch db >/dev/null 2>&1; then
    cargo deny --offline --log-level error check advisories || status=$?
elif compgen -G "$db_dir/*/crates" >/dev/null; then
    # A copy made earlier (or put there by hand: a clone of the advisory-db
    # repository, as cargo-deny names it); a failed fetch leaves only a lock.
    echo "audit: advisory database not reachable; checking against the copy in $db_dir" >&2
    cargo deny --offline --log-level error check advisories || status=$?
else
    echo "audit: advisories NOT CHECKED: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be fetched from here and no copy is in $db_dir"
    if [ "${QUERYWATCH_AUDIT_STRICT:-0}" = 1 ]; then
        status=1
    fi
fi
exit "$status"
