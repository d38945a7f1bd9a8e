#!/usr/bin/env bash
# Generate the benchmark log set for `cargo bench --bench analyze`:
# real PostgreSQL stderr logs, rotated into several files, >= 64 MB in all.
#
#   bench/generate-log.sh [--force]
#
# Output: target/bench-logs/postgresql-*.log (plus WORKLOAD.txt describing
# the run). An existing complete set is kept unless --force is given; the set
# is built in a staging dir and renamed into place only when the whole run
# succeeded, so target/bench-logs/ existing means it is complete.
#
# The cluster handling (temp dir, free port, unprivileged server user, trap
# cleanup) follows tests/fixtures/generate.sh; the settings differ: one stderr
# log with pgbadger's documented prefix, so pgbadger parses it natively and
# both tools read the same bytes.
#
# Needs the packages of scripts/deps.sh. As root, the server runs as the
# system user querywatch-pg (created when missing) because initdb refuses root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$repo/target/bench-logs

force=0
case ${1:-} in
"") ;;
--force) force=1 ;;
*)
    echo "usage: bench/generate-log.sh [--force]" >&2
    exit 2
    ;;
esac

if [[ -d "$out" && $force -eq 0 ]]; then
    echo "generate-log.sh: $out exists (use --force to regenerate)" >&2
    exit 0
fi

# pgbadger's documented prefix for stderr logs; the bench passes the same
# string to both tools. Keep in sync with PREFIX in benches/analyze.rs.
prefix='%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h '
min_bytes=$((64 * 1024 * 1024))

# Workload, all fixed counts (-t is transactions per client; 4 clients).
# Sized so the log set is ~75 MB on PostgreSQL 15: simple protocol dominates
# (literals differ on every line: the expensive case for a log analyzer).
clients=4
scale=5
declare -A tx=(
    [tpcb_simple]=9000
    [tpcb_extended]=600
    [tpcb_prepared]=900
    [custom_simple]=1500
    [custom_extended]=300
)

PG_BIN=$("$repo/scripts/deps.sh")
version=$("$PG_BIN/postgres" --version)

# initdb refuses to run as root: run the server side as a system user then.
# Clients (psql, pgbench) connect over TCP and may stay as the caller.
if [[ "$(id -u)" -eq 0 ]]; then
    pg_user=querywatch-pg
    if ! id -u "$pg_user" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$pg_user"
    fi
else
    pg_user=$(id -un)
fi

# The cluster is throwaway (deleted on exit); only the finished logs are kept,
# under target/.
work=$(mktemp -d "${TMPDIR:-/tmp}/querywatch-bench.XXXXXX")
data=$work/data
if [[ "$(id -u)" -eq 0 ]]; then
    chown "$pg_user:" "$work"
fi
staging=$out.tmp

# Run a server binary as the cluster owner, from a directory it can read.
as_pg() {
    if [[ "$(id -u)" -eq 0 ]]; then
        (cd "$work" && runuser -u "$pg_user" -- "$@")
    else
        (cd "$work" && "$@")
    fi
}

cleanup() {
    # Immediate stop: on the error path nobody needs a clean shutdown.
    if [[ -f "$data/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work" "$staging"
}
trap cleanup EXIT

# A port nothing listens on: a refused connection (bash's /dev/tcp) says the
# port is free right now. start_cluster retries if someone takes it meanwhile.
free_port() {
    local port _
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "generate-log.sh: no free TCP port found" >&2
    return 1
}

port=""
start_cluster() {
    local _
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        # pg_ctl -w polls until the server accepts connections (or 60 s).
        if as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$work/startup.log" -w -t 60 \
            -o "-p $port" start >/dev/null; then
            return 0
        fi
    done
    echo "generate-log.sh: the server did not start; startup log:" >&2
    cat "$work/startup.log" >&2 || true
    if [[ -d "$data/log" ]]; then tail -n 50 "$data"/log/*.log >&2 || true; fi
    return 1
}

echo "generate-log.sh: $version, cluster in $work" >&2
# C locale and UTF8 so the output does not depend on the machine's locale.
as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --no-locale -E UTF8 --no-sync >/dev/null
cat >>"$data/postgresql.conf" <<CONF

# added by bench/generate-log.sh
listen_addresses = '127.0.0.1'
# The socket lives in the private temp dir: never collides with a system
# PostgreSQL on /var/run/postgresql.
unix_socket_directories = '$work'

logging_collector = on
log_destination = 'stderr'
log_directory = 'log'
# Seconds in the name: every size rotation gets a new file (16 MB takes far
# more than a second to write), and name order is time order.
log_filename = 'postgresql-%Y%m%d_%H%M%S.log'
log_rotation_age = 0
log_rotation_size = '16MB'
log_line_prefix = '$prefix'
lc_messages = 'C'                  # untranslated messages: what both parsers expect
log_min_duration_statement = 0     # every statement with its duration
log_timezone = 'UTC'
# The ordinary noise of a real log, so not every line is a duration line.
log_connections = on
log_disconnections = on
log_checkpoints = on
log_lock_waits = on

# Speed of a throwaway cluster: crash safety is irrelevant here.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 20
shared_buffers = '64MB'
jit = off
CONF

start_cluster
echo "generate-log.sh: running the workload on port $port" >&2
export PGHOST=127.0.0.1 PGPORT=$port
# Never read a developer's ~/.pgpass, service file or PGOPTIONS.
unset PGPASSFILE PGSERVICE PGOPTIONS PGDATABASE PGUSER
export PGPASSWORD=''

psql_as() {
    local user=$1 db=$2
    shift 2
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -U "$user" -d "$db" -o /dev/null "$@"
}

pgbench_out=$work/pgbench.out
run_pgbench() {
    "$PG_BIN/pgbench" -U bench "$@" bench >"$pgbench_out" 2>&1 || {
        cat "$pgbench_out" >&2
        exit 1
    }
}

psql_as postgres postgres -c 'CREATE ROLE bench LOGIN' -c 'CREATE DATABASE bench OWNER bench'
run_pgbench -i -s "$scale" -q
psql_as bench bench -c 'CREATE TABLE bench_audit (
    id bigserial PRIMARY KEY,
    aid integer NOT NULL,
    bid integer NOT NULL,
    delta integer NOT NULL,
    kind text NOT NULL,
    note text,
    at timestamptz NOT NULL DEFAULT now())'

# Each run: 4 clients on 2 threads, a fixed seed, fixed transaction counts.
# -n: no vacuum between runs (pgbench's own vacuum is logged once at init).
common=(-n -c "$clients" -j 2 --random-seed=42)
run_pgbench "${common[@]}" -M simple -t "${tx[tpcb_simple]}"
run_pgbench "${common[@]}" -M simple -t "${tx[custom_simple]}" -f "$here/custom.pgbench"
run_pgbench "${common[@]}" -M extended -t "${tx[tpcb_extended]}"
run_pgbench "${common[@]}" -M prepared -t "${tx[tpcb_prepared]}"
run_pgbench "${common[@]}" -M extended -t "${tx[custom_extended]}" -f "$here/custom.pgbench"
psql_as postgres postgres -c 'CHECKPOINT'

as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null

rm -rf "$staging"
mkdir -p "$staging"
cp "$data"/log/postgresql-*.log "$staging/"
# The server writes its logs 0600; these are ordinary build outputs.
chmod 0644 "$staging"/*.log

files=("$staging"/postgresql-*.log)
total=$(cat "${files[@]}" | wc -c)
if ((total < min_bytes)); then
    echo "generate-log.sh: the logs total $total bytes, less than $min_bytes; raise the counts in tx[]" >&2
    exit 1
fi
if ((${#files[@]} < 3)); then
    echo "generate-log.sh: only ${#files[@]} log file(s): log rotation did not happen" >&2
    exit 1
fi

tx_list=$(for k in "${!tx[@]}"; do echo "$k=${tx[$k]}"; done | sort | tr '\n' ' ')
cat >"$staging/WORKLOAD.txt" <<INFO
$version
log_line_prefix = '$prefix'
log_rotation_size = 16MB, log_min_duration_statement = 0
pgbench -i -s $scale; then ${common[*]} runs, transactions per client: $tx_list
custom script: bench/custom.pgbench
files: ${#files[@]}, bytes: $total
INFO

rm -rf "$out"
mv "$staging" "$out"
echo "generate-log.sh: wrote ${#files[@]} files, $total bytes to $out" >&2
