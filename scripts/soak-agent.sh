#!/usr/bin/env bash
# Agent soak: a real PostgreSQL at a high statement rate, its csvlog rotated
# every minute, one `querywatch agent` following it, and a `querywatch
# collector` that is stopped and started again every few minutes. At the
# end, the calls the collector received per statement shape must equal
# pg_stat_statements' calls: zero lost, zero duplicated.
#
#   scripts/soak-agent.sh [--minutes 30] [--rate 1000] [--restart-every 300]
#                         [--down 30] [--interval 10s] [--out DIR]
#
# --down is how long the collector stays stopped. The stop comes right
# after a batch (see below), so a downtime shorter than the agent's
# --interval ends before the agent's next export and the agent never sees
# the collector gone; the default (30 s, three intervals) makes its
# exports fail, retry and spool, and the spool drain into the next
# incarnation.
#
# --rate is pgbench transactions/s; each transaction is 4 statements (one
# per shape), each its own implicit transaction. Run as root (the server
# runs as the unprivileged user querywatch-pg, like the tests) or as a user
# who can run initdb.
#
# How the count is exact across collector restarts: the collector keeps its
# data in memory, so before each stop the script reads the calls per shape
# from its JSON API (`/api/v1/queries?range=2h`) and adds them to a running
# total. It reads only when the collector is quiescent — every batch it
# received has been merged into the store (`ingest_batches_total` =
# `batches_total`, `queue_batches` = 0) — and checks the received-request
# counter did not move across the read, then stops it at once. The agent
# exports once per interval (10 s), so the stop lands between two batches.
# A batch the agent had not got acknowledged is retried or spooled by the
# agent and arrives at the next incarnation; a batch that arrived twice
# would show as more calls than pg_stat_statements has.
#
# Output (also in DIR/summary.txt): the rate, lost/duplicated per shape,
# the agent's CPU (% of one core, per minute) and RSS over time
# (DIR/agent-samples.csv: unix time, utime+stime ticks, VmRSS kB).
# Exit status 0 when every shape agrees, 1 otherwise, 2 on a setup error.
set -euo pipefail

MINUTES=30
RATE=1000
RESTART_EVERY=300
DOWN=30
INTERVAL=10s
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --restart-every) RESTART_EVERY="$2"; shift 2 ;;
    --down) DOWN="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/target/soak-agent}"
PG_USER=querywatch-pg
PG_BIN="${QUERYWATCH_PG_BIN:-$(pg_config --bindir 2>/dev/null || true)}"
[[ -x "$PG_BIN/initdb" ]] || PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -x "$PG_BIN/initdb" ]] || { echo "soak: no PostgreSQL server binaries (run scripts/deps.sh)" >&2; exit 2; }
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is needed" >&2; exit 2; }
done

mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/querywatch-soak.XXXXXX)"
log() { echo "soak $(date -u +%H:%M:%S): $*" | tee -a "$OUT/soak.log" >&2; }
: > "$OUT/soak.log"

# The binary under test, copied so that a rebuild during the run cannot
# swap it under the collector's restarts.
BIN="$REPO/target/release/querywatch"
if [[ ! -x "$BIN" ]]; then
  log "building the release binary"
  (cd "$REPO" && cargo build --release --bin querywatch)
fi
cp "$BIN" "$WORK/querywatch"
QW="$WORK/querywatch"
log "binary $(sha256sum "$QW" | cut -c1-16), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')"

ROOT=0; [[ "$(id -u)" == 0 ]] && ROOT=1
as_pg() {
  if [[ $ROOT == 1 ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}
if [[ $ROOT == 1 ]]; then
  id "$PG_USER" >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  chown "$PG_USER:" "$WORK"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGPORT="$(free_port)"; GRPC="$(free_port)"; API="$(free_port)"
export PGHOST=127.0.0.1 PGPORT
unset PGPASSFILE PGSERVICE PGOPTIONS PGDATABASE PGUSER

AGENT_PID=""; COLLECTOR_PID=""; PGBENCH_PID=""
cleanup() {
  set +e
  for pid in $PGBENCH_PID $AGENT_PID $COLLECTOR_PID; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in $PGBENCH_PID $AGENT_PID $COLLECTOR_PID; do
    wait "$pid" 2>/dev/null
  done
  [[ -f "$WORK/data/postmaster.pid" ]] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

# ---- PostgreSQL --------------------------------------------------------------
as_pg "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-locale -E UTF8 --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
# added by scripts/soak-agent.sh
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = 1000
compute_query_id = on
logging_collector = on
log_destination = 'csvlog'
log_directory = 'log'
log_filename = 'postgresql-%Y%m%d_%H%M.log'
log_rotation_age = '1min'
log_rotation_size = 0
log_file_mode = 0640
log_min_duration_statement = 0
lc_messages = 'C'
log_timezone = 'UTC'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 30
shared_buffers = '128MB'
jit = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/startup.log" -w -t 60 start >/dev/null
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION pg_stat_statements"
# The tables are created through format() so that no setup statement names
# them literally: the shapes are told apart by table name below.
"${PSQL[@]}" -c "DO \$\$ DECLARE t text; BEGIN
  FOREACH t IN ARRAY ARRAY['a','b','c','d'] LOOP
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, v bigint NOT NULL)', 'soak_' || t);
    IF t <> 'd' THEN
      EXECUTE format('INSERT INTO %I SELECT g, g FROM generate_series(1, 100000) g', 'soak_' || t);
    END IF;
  END LOOP;
  EXECUTE 'ALTER TABLE ' || quote_ident('soak_' || 'd') || ' DROP CONSTRAINT ' || quote_ident('soak_' || 'd_pkey');
END \$\$"
"${PSQL[@]}" -c "VACUUM ANALYZE"
SHAPES=(soak_a soak_b soak_c soak_d)
cat > "$WORK/workload.pgbench" <<'EOF'
\set id random(1, 100000)
SELECT v FROM soak_a WHERE id = :id;
UPDATE soak_b SET v = v + 1 WHERE id = :id;
SELECT count(*) FROM soak_c WHERE id BETWEEN :id AND :id + 10;
INSERT INTO soak_d (id, v) VALUES (:id, 1);
EOF

# ---- collector and agent ---------------------------------------------------------
start_collector() {
  "$QW" collector --grpc "127.0.0.1:$GRPC" --otlp-http off --listen "127.0.0.1:$API" \
    >>"$OUT/collector.stderr" 2>&1 &
  COLLECTOR_PID=$!
  local deadline=$((SECONDS + 30))
  until curl -sf "http://127.0.0.1:$API/readyz" >/dev/null; do
    (( SECONDS < deadline )) || { log "the collector did not get ready"; exit 2; }
    sleep 0.2
  done
}
metric() { # the value of one un-labelled (or first) sample of a metric
  curl -sf "http://127.0.0.1:$API/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { print $2; exit }'
}
# Calls per shape in the running collector, space-separated in SHAPES order.
collector_calls() {
  curl -sf "http://127.0.0.1:$API/api/v1/queries?range=2h&limit=1000&sort=calls" | jq -r '
    (if type == "array" then . else (.queries // .rows // .items) end) as $q
    | [ "soak_a", "soak_b", "soak_c", "soak_d" ] as $s
    | [ $s[] as $t | [ $q[] | select((.text // .query) | test("\\b" + $t + "\\b")) | select((.text // .query) | test("^\\s*(CREATE|DO|ALTER)"; "i") | not) | .calls ] | add // 0 ]
    | map(tostring) | join(" ")'
}
# Waits until every batch received has been merged, reads the calls, and
# checks nothing arrived meanwhile; prints the calls.
quiescent_calls() {
  local deadline=$((SECONDS + 120))
  while (( SECONDS < deadline )); do
    local r1 b1 q1 calls r2
    r1="$(metric querywatch_collector_ingest_batches_total)"
    b1="$(metric querywatch_collector_batches_total)"
    q1="$(metric querywatch_collector_queue_batches)"
    if [[ -n "$r1" && "$r1" == "$b1" && "$q1" == 0 ]]; then
      calls="$(collector_calls)"
      r2="$(metric querywatch_collector_ingest_batches_total)"
      if [[ "$r1" == "$r2" ]]; then echo "$calls"; return 0; fi
    fi
    sleep 0.2
  done
  log "the collector did not become quiescent within 120 s"
  return 1
}
TOTAL=(0 0 0 0)
add_calls() {
  local i=0
  for n in $1; do TOTAL[$i]=$((TOTAL[$i] + n)); i=$((i + 1)); done
}

start_collector
log "PostgreSQL on $PGPORT, collector gRPC $GRPC, API $API; work dir $WORK"
cat > "$WORK/agent.toml" <<EOF
node = "soak-1"
cluster = "soak"
interval = "$INTERVAL"
state_dir = "$WORK/agent-state"
[logs]
directory = "$WORK/data/log"
pattern = "postgresql-*.csv"
start_at = "beginning"
[export]
endpoint = "http://127.0.0.1:$GRPC"
EOF
"$QW" agent --config "$WORK/agent.toml" >"$OUT/agent.stdout" 2>"$OUT/agent.stderr" &
AGENT_PID=$!
deadline=$((SECONDS + 30))
until grep -qs "exporting every" "$OUT/agent.stderr"; do
  (( SECONDS < deadline )) || { log "the agent did not start"; exit 2; }
  kill -0 "$AGENT_PID" 2>/dev/null || { log "the agent exited: $(cat "$OUT/agent.stderr")"; exit 2; }
  sleep 0.2
done

# ---- the load, the restarts, the samples -----------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
agent_sample() { # unix time, utime+stime ticks, VmRSS kB
  local stat rss
  stat="$(cut -d')' -f2- "/proc/$AGENT_PID/stat")"
  rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$AGENT_PID/status")"
  awk -v t="$(date +%s)" -v r="$rss" '{ print t "," $12 + $13 "," r }' <<<"$stat"
}
echo "unix_s,ticks,rss_kb" > "$OUT/agent-samples.csv"
agent_sample >> "$OUT/agent-samples.csv"

LOAD_S=$((MINUTES * 60))
log "pgbench: $RATE tx/s x 4 statements, $MINUTES min; collector restarted every ${RESTART_EVERY}s (down ${DOWN}s)"
"$PG_BIN/pgbench" -U postgres -n -M simple -c 4 -j 2 -R "$RATE" -T "$LOAD_S" -P 60 -f "$WORK/workload.pgbench" postgres \
  >"$OUT/pgbench.out" 2>"$OUT/pgbench.stderr" &
PGBENCH_PID=$!
LOAD_START=$SECONDS
next_restart=$((SECONDS + RESTART_EVERY))
next_sample=$((SECONDS + 10))
restarts=0
while kill -0 "$PGBENCH_PID" 2>/dev/null; do
  kill -0 "$AGENT_PID" 2>/dev/null || { log "the agent died: $(tail -5 "$OUT/agent.stderr")"; exit 1; }
  if (( SECONDS >= next_sample )); then
    agent_sample >> "$OUT/agent-samples.csv"
    next_sample=$((next_sample + 10))
  fi
  if (( SECONDS >= next_restart )); then
    calls="$(quiescent_calls)"
    kill -TERM "$COLLECTOR_PID"; wait "$COLLECTOR_PID" || true
    add_calls "$calls"
    restarts=$((restarts + 1))
    log "collector stopped (restart $restarts) after counting [$calls]; running total [${TOTAL[*]}]"
    sleep "$DOWN"
    start_collector
    next_restart=$((SECONDS + RESTART_EVERY))
  fi
  sleep 1
done
wait "$PGBENCH_PID" || { log "pgbench failed: $(cat "$OUT/pgbench.stderr")"; exit 2; }
PGBENCH_PID=""
LOAD_S_REAL=$((SECONDS - LOAD_START))
agent_sample >> "$OUT/agent-samples.csv"
log "load finished after ${LOAD_S_REAL}s"

# ---- the verdict -----------------------------------------------------------------------
pgss_calls() {
  local out=""
  for t in "${SHAPES[@]}"; do
    out+="$("${PSQL[@]}" -At -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
      WHERE toplevel AND query ~ '\\m$t\\M' AND query !~* '^\\s*(CREATE|DO|ALTER)'") "
  done
  echo "${out% }"
}
WANT=($(pgss_calls))
dealloc="$("${PSQL[@]}" -At -c "SELECT dealloc FROM pg_stat_statements_info")"
# Wait until the live collector has everything (the agent is at most an
# interval plus a file behind), or stop at the first excess (a duplicate).
deadline=$((SECONDS + 180))
while :; do
  calls="$(quiescent_calls)"
  read -r -a live <<<"$calls"
  got=(); done_all=1; over=0
  for i in 0 1 2 3; do
    got[$i]=$((TOTAL[$i] + live[$i]))
    (( got[$i] == WANT[$i] )) || done_all=0
    (( got[$i] > WANT[$i] )) && over=1
  done
  (( done_all || over || SECONDS >= deadline )) && break
  sleep 2
done
agent_sample >> "$OUT/agent-samples.csv"
HWM_KB="$(awk '/^VmHWM:/ { print $2 }' "/proc/$AGENT_PID/status")"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || log "the agent exited with $?"
AGENT_PID=""

total_want=0; status=0
{
  echo "command: scripts/soak-agent.sh --minutes $MINUTES --rate $RATE --restart-every $RESTART_EVERY --down $DOWN --interval $INTERVAL"
  echo "load: ${LOAD_S_REAL}s; $(grep -E '^(tps|number of transactions actually)' "$OUT/pgbench.out" | tr '\n' ';')"
  echo "collector restarts: $restarts; log files: $(ls "$WORK/data/log" | grep -c '\.csv$') csv, $(du -sh "$WORK/data/log" | cut -f1); pg_stat_statements dealloc: $dealloc"
  printf '%-8s %12s %12s %8s %10s\n' shape pgss collector lost duplicated
  for i in 0 1 2 3; do
    lost=0; dup=0
    (( got[$i] < WANT[$i] )) && lost=$((WANT[$i] - got[$i]))
    (( got[$i] > WANT[$i] )) && dup=$((got[$i] - WANT[$i]))
    (( lost + dup > 0 )) && status=1
    total_want=$((total_want + WANT[$i]))
    printf '%-8s %12d %12d %8d %10d\n' "${SHAPES[$i]}" "${WANT[$i]}" "${got[$i]}" "$lost" "$dup"
  done
  echo "statements/s (the 4 shapes, pg_stat_statements): $(awk -v n="$total_want" -v s="$LOAD_S_REAL" 'BEGIN { printf "%.0f", n / s }')"
  # CPU % of one core per minute and RSS, from the samples.
  awk -F, -v hz="$CLK_TCK" -v hwm="$HWM_KB" 'NR == 2 { t0 = $1; k0 = $2 } NR > 1 {
      t[NR] = $1; k[NR] = $2; r[NR] = $3; n = NR
      if (rmin == "" || $3 < rmin) rmin = $3; if ($3 > rmax) rmax = $3 }
    END {
      line = "agent CPU % of one core per ~minute:"; last = 2
      for (i = 3; i <= n; i++) if (t[i] - t[last] >= 60 || i == n) {
        c = 100 * (k[i] - k[last]) / hz / (t[i] - t[last]); line = line sprintf(" %.1f", c)
        if (c > cmax) cmax = c; last = i }
      print line
      printf "agent CPU mean over the run: %.2f%% of one core; max per-minute %.1f%%\n", 100 * (k[n] - k0) / hz / (t[n] - t0), cmax
      printf "agent RSS: min %.1f MiB, max %.1f MiB (sampled every 10 s), VmHWM %.1f MiB\n", rmin / 1024, rmax / 1024, hwm / 1024
      line = "agent RSS MiB every ~5 min:"; for (i = 2; i <= n; i += 30) line = line sprintf(" %.1f", r[i] / 1024); print line
    }' "$OUT/agent-samples.csv"
  echo "agent stderr: $(wc -l < "$OUT/agent.stderr") lines; $(grep -c 'warning' "$OUT/agent.stderr" || true) warnings; last: $(tail -1 "$OUT/agent.stderr")"
  if (( status == 0 )); then echo "verdict: PASS (zero lost, zero duplicated)"; else echo "verdict: FAIL"; fi
} | tee "$OUT/summary.txt"
exit $status
