#!/usr/bin/env bash
# The main job, live, on its embedded defaults: three throwaway PostgreSQL
# nodes, a querywatch agent next to each, one collector, and a workload with
# a hot partition (on node n2 only), a slow unindexed query (n1) and a lock
# convoy (n3). Prints the findings as the collector opens them and serves
# the web page and /metrics until Ctrl-C.
#
#   scripts/demo.sh                  # until Ctrl-C
#   scripts/demo.sh --duration 120   # a bounded run (seconds), then clean up
#   scripts/demo.sh --api-port 9090  # if 8080 is taken
#   scripts/demo.sh --offline [ARGS] # the offline job instead: `querywatch
#                                    # analyze` on the real PostgreSQL 15 log
#                                    # shipped in tests/fixtures/pg15 (ARGS go
#                                    # to analyze, e.g. --format json or paths)
#
# As root it installs what is missing (libclang-dev to build, PostgreSQL 15)
# and runs the servers as the unprivileged user querywatch-pg (initdb
# refuses root). Everything lives in one temp directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

duration=0
api_port=8080
offline=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration="${2:?--duration needs seconds}"; shift 2 ;;
        --api-port) api_port="${2:?--api-port needs a port}"; shift 2 ;;
        --offline) offline=1; shift; break ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

scripts/deps.sh --build-only   # libclang-dev, which pg_query's build needs
cargo build --release --locked --quiet --bin querywatch
qw="$repo/target/release/querywatch"

if [[ $offline == 1 ]]; then
    for arg in "$@"; do
        if [[ -e "$arg" || "$arg" == *[*?[]* ]]; then
            exec "$qw" analyze "$@"
        fi
    done
    # The shipped log was written with the log_line_prefix of the generator's config.
    prefix=$(sed -n "s/^log_line_prefix = '\(.*\)'.*/\1/p" tests/fixtures/workload/postgresql.conf)
    exec "$qw" analyze --prefix "$prefix" "$@" tests/fixtures/pg15/postgresql.log
fi

# --- PostgreSQL ---------------------------------------------------------------
find_pg_bin() {
    local d
    if command -v pg_config >/dev/null && d=$(pg_config --bindir) && [[ -x $d/initdb ]]; then echo "$d"; return; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $d/initdb ]] && { echo "$d"; return; }
    done
    return 1
}
if ! pg_bin=$(find_pg_bin); then
    if [[ $(id -u) == 0 ]]; then
        echo "demo.sh: installing PostgreSQL (apt-get install postgresql postgresql-contrib)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
        pg_bin=$(find_pg_bin)
    else
        echo "demo.sh: PostgreSQL server binaries not found; as root run: apt-get install postgresql postgresql-contrib" >&2
        exit 1
    fi
fi

as_pg=()
if [[ $(id -u) == 0 ]]; then
    id querywatch-pg >/dev/null 2>&1 ||
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin querywatch-pg
    as_pg=(runuser -u querywatch-pg --)
fi

work=$(mktemp -d /tmp/querywatch-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "demo.sh: stopping"
    for p in "${pids[@]}" $(jobs -p); do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in 1 2 3; do
        [[ -f $work/n$n/data/postmaster.pid ]] &&
            "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/n$n/data" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() { # first port from $1 nobody listens on
    local p=$1
    while (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
port_of=()
for n in 1 2 3; do
    dir="$work/n$n"
    mkdir -p "$dir/data" "$dir/sock" "$dir/state"
    # The server user writes its data, socket and server log here.
    [[ ${#as_pg[@]} -gt 0 ]] && chown -R querywatch-pg: "$dir"
    "${as_pg[@]}" "$pg_bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    port=$(free_port $((54320 + n)))
    port_of[$n]=$port
    cat "$repo/tests/fixtures/workload/postgresql.conf" >>"$dir/data/postgresql.conf"
    cat >>"$dir/data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
log_destination = 'csvlog'
log_rotation_size = '20MB'
auto_explain.log_min_duration = '20ms'
EOF
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    psql=("$pg_bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1)
    "${psql[@]}" -d postgres -c "CREATE DATABASE shop" >/dev/null
    "${psql[@]}" -d shop >/dev/null <<'EOF'
CREATE EXTENSION pg_stat_statements;
CREATE TABLE events (k int NOT NULL, v int NOT NULL) PARTITION BY LIST (k);
DO $$ BEGIN FOR p IN 0..7 LOOP
  EXECUTE format('CREATE TABLE events_p%s PARTITION OF events FOR VALUES IN (%s)', p, p);
END LOOP; END $$;
INSERT INTO events SELECT g % 8, g FROM generate_series(1, 16000) g;
CREATE INDEX ON events (v);
CREATE TABLE big (id int, val int, pad text);
INSERT INTO big SELECT g, g % 100000, 'x' FROM generate_series(1, 600000) g;
CREATE TABLE accounts (id int PRIMARY KEY, v int);
INSERT INTO accounts VALUES (1, 0), (2, 0);
ANALYZE;
EOF
done
echo "demo.sh: PostgreSQL nodes n1 n2 n3 on ports ${port_of[1]} ${port_of[2]} ${port_of[3]} ($work)"

# --- collector and agents -----------------------------------------------------
grpc=$(free_port 4317)
otlp_http=$(free_port $((grpc + 1)))
cat >"$work/collector.toml" <<EOF
[receive]
grpc = "127.0.0.1:$grpc"
http = "127.0.0.1:$otlp_http"
[http]
listen = "127.0.0.1:$api_port"
[detect]
interval = "2s"
window = "2m"
EOF
"$qw" collector --config "$work/collector.toml" 2>"$work/collector.log" &
pids+=($!)
for n in 1 2 3; do
    cat >"$work/n$n/agent.toml" <<EOF
node = "n$n"
cluster = "demo"
interval = "2s"
state_dir = "$work/n$n/state"
[logs]
directory = "$work/n$n/data/log"
pattern = "postgresql*.csv"
start_at = "end"
[database]
dsn = "host=127.0.0.1 port=${port_of[$n]} user=postgres dbname=shop"
statements_interval = "2s"
[export]
endpoint = "http://127.0.0.1:$grpc"
EOF
    "$qw" agent --config "$work/n$n/agent.toml" 2>"$work/n$n/agent.log" &
    pids+=($!)
done

# --- Prometheus, when installed (scripts/deps.sh installs it) -----------------
prom_url=""
if command -v prometheus >/dev/null; then
    prom_port=$(free_port 9090)
    mkdir -p "$work/prometheus/rules"
    # The demo's copy of the rules fires sooner: every `for:` is 1m (the
    # shipped rules wait 10-15 minutes so that a blip pages nobody).
    sed -E 's/^( *for: ).*/\11m/' deploy/prometheus/rules/querywatch.rules.yml \
        >"$work/prometheus/rules/querywatch.rules.yml"
    cat >"$work/prometheus/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: [rules/querywatch.rules.yml]
scrape_configs:
  - job_name: querywatch-collector
    static_configs: [{targets: ["127.0.0.1:$api_port"]}]
EOF
    prometheus --config.file="$work/prometheus/prometheus.yml" --storage.tsdb.path="$work/prometheus/data" \
        --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
    pids+=($!)
    prom_url="http://127.0.0.1:$prom_port/alerts"
fi

# --- workload -----------------------------------------------------------------
q() { "$pg_bin/psql" -X -q -h 127.0.0.1 -p "${port_of[$1]}" -U postgres -d shop -v ON_ERROR_STOP=1 "${@:2}" >/dev/null 2>&1; }
partitions() { # node, percent of lookups on partition 3
    while true; do
        q "$1" -c "DO \$\$ DECLARE c int; BEGIN FOR i IN 1..2000 LOOP
            IF (i % 100) < $2 THEN SELECT count(*) INTO c FROM events WHERE k = 3 AND v = i;
            ELSE SELECT count(*) INTO c FROM events WHERE k = i % 8 AND v = i; END IF; END LOOP; END \$\$;" || true
        sleep 1
    done
}
slow() {
    while true; do
        q 1 -c "SELECT id, pad FROM big WHERE val = $((RANDOM % 100000))" || true
        sleep 0.1
    done
}
convoy() {
    while true; do
        q 3 <<<"BEGIN;
UPDATE accounts SET v = v + 1 WHERE id = 1;
SELECT pg_sleep(1);
COMMIT;" &
        sleep 0.3
        q 3 -c "UPDATE accounts SET v = v + 2 WHERE id = 1" || true
        wait
        sleep 5
    done
}
partitions 1 0 & pids+=($!)
partitions 2 90 & pids+=($!)
partitions 3 0 & pids+=($!)
slow & pids+=($!)
convoy & pids+=($!)

cat <<EOF

  querywatch demo is running.
    web page:   http://127.0.0.1:$api_port/
    findings:   http://127.0.0.1:$api_port/api/v1/findings
    metrics:    http://127.0.0.1:$api_port/metrics
    OTLP:       gRPC 127.0.0.1:$grpc, HTTP 127.0.0.1:$otlp_http
    Prometheus: ${prom_url:-not installed (scripts/deps.sh installs it): no alerts}
  Findings appear below as the collector opens them (about half a minute).
  $( ((duration > 0)) && echo "Stopping after ${duration}s." || echo "Ctrl-C stops and cleans up.")

EOF
tail -n +1 -F "$work/collector.log" 2>/dev/null | grep --line-buffered -E "finding|error|cannot" &
pids+=($!)
if ((duration > 0)); then
    sleep "$duration"
else
    while true; do sleep 3600; done
fi
