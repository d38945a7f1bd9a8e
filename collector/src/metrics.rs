//! `/metrics`: the Prometheus text exposition of the collector.
//!
//! - Counters since start from [`Totals`](crate::totals::Totals): per
//!   (fingerprint, node) calls, time, rows, errors and a latency histogram
//!   with buckets for SQL latencies — only for the admitted top
//!   fingerprints, the rest in `fingerprint="other"`; per relation scans and
//!   tuples (capped); per node time, calls, batches and the agents' own
//!   input and health counters.
//! - Gauges over the detection window: each partition's share of its
//!   parent's load, each parent's skew ratio, each node's share of the
//!   cluster's database time.
//! - One `querywatch_finding` series per open finding.
//! - The collector's own health: ingest by transport, rejects by reason,
//!   queue, store size, caps' overflow, fingerprint cache.
//!
//! Label cardinality is bounded by `[store] metrics_fingerprints` ×
//! nodes, `metrics_relations`, and the open-findings cap.

use crate::exposition::{Exposition, Kind};
use crate::serve::{Shared, lock};
use crate::totals::{LATENCY_BUCKETS, SeriesFingerprint};
use querywatch_wire::stats::EpochMillis;
use std::sync::atomic::Ordering;

#[allow(clippy::cast_precision_loss)] // counters exposed as floats, as Prometheus stores them
fn f(v: u64) -> f64 {
    v as f64
}

/// Shortens a statement text for the `querywatch_query_info` label.
fn label_text(t: &str) -> String {
    let flat: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= 200 { flat } else { flat.chars().take(197).collect::<String>() + "..." }
}

/// The whole exposition as Prometheus text.
pub fn render(s: &Shared, now: EpochMillis) -> String {
    exposition(s, now).text()
}

/// Every family `/metrics` shows (and `[forward]` sends).
pub fn exposition(s: &Shared, now: EpochMillis) -> Exposition {
    let mut o = Exposition::default();
    {
        let w = lock(&s.windows);
        let t = &w.totals;
        let q = t.query_series();
        let fp_label = |k: &SeriesFingerprint| match k {
            SeriesFingerprint::One(fp) => fp.to_string(),
            SeriesFingerprint::Other => "other".to_owned(),
        };
        type Field = fn(&crate::totals::QueryTotals) -> f64;
        let counters: [(&str, &str, Field); 7] = [
            (
                "querywatch_query_calls_total",
                "Executions (pg_stat_statements' count when the statistics source has it, else logged ones).",
                |x| f(x.calls),
            ),
            ("querywatch_query_time_seconds_total", "Database time (execution + planning).", |x| x.time),
            ("querywatch_query_rows_total", "Rows returned or affected.", |x| f(x.rows)),
            ("querywatch_query_errors_total", "Executions that ended in an error.", |x| f(x.errors)),
            ("querywatch_query_temp_bytes_total", "Bytes written to temporary files.", |x| f(x.temp_bytes)),
            ("querywatch_query_shared_blks_hit_total", "Shared buffer hits (pg_stat_statements).", |x| {
                f(x.shared_blks_hit)
            }),
            ("querywatch_query_shared_blks_read_total", "Shared blocks read (pg_stat_statements).", |x| {
                f(x.shared_blks_read)
            }),
        ];
        for (name, help, get) in counters {
            o.family(name, Kind::Counter, help);
            for (k, node, v) in &q {
                o.sample_since(name, &[("fingerprint", &fp_label(k)), ("node", node)], get(v), v.since);
            }
        }
        let name = "querywatch_query_duration_seconds";
        o.family(name, Kind::Histogram, "Logged statement durations.");
        for (k, node, v) in &q {
            let fp = fp_label(k);
            let mut cum = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cum += v.buckets[i];
                o.sample_since(
                    &format!("{name}_bucket"),
                    &[("fingerprint", &fp), ("node", node), ("le", &le.to_string())],
                    f(cum),
                    v.since,
                );
            }
            cum += v.buckets[LATENCY_BUCKETS.len()];
            o.sample_since(
                &format!("{name}_bucket"),
                &[("fingerprint", &fp), ("node", node), ("le", "+Inf")],
                f(cum),
                v.since,
            );
            o.sample_since(&format!("{name}_sum"), &[("fingerprint", &fp), ("node", node)], v.duration_sum, v.since);
            o.sample_since(&format!("{name}_count"), &[("fingerprint", &fp), ("node", node)], f(cum), v.since);
        }
        o.family(
            "querywatch_query_info",
            Kind::Gauge,
            "The normalized text of each fingerprint with its own series (value 1).",
        );
        let mut fps: Vec<_> = q
            .iter()
            .filter_map(|(k, _, _)| match k {
                SeriesFingerprint::One(fp) => Some(*fp),
                SeriesFingerprint::Other => None,
            })
            .collect();
        fps.dedup();
        for fp in fps {
            if let Some((text, _)) = w.fingerprint_text(fp) {
                o.sample(
                    "querywatch_query_info",
                    &[("fingerprint", &fp.to_string()), ("text", &label_text(&text))],
                    1.0,
                );
            }
        }

        let mut tables: Vec<_> = t.tables.iter().collect();
        tables.sort_by(|a, b| a.0.cmp(b.0));
        type TField = fn(&querywatch_wire::dbstats::TableDelta) -> u64;
        let tcounters: [(&str, &str, TField); 7] = [
            ("querywatch_table_seq_scan_total", "Sequential scans (pg_stat_user_tables).", |d| d.seq_scan),
            ("querywatch_table_idx_scan_total", "Index scans.", |d| d.idx_scan),
            ("querywatch_table_seq_tup_read_total", "Tuples read by sequential scans.", |d| d.seq_tup_read),
            ("querywatch_table_tup_inserted_total", "Tuples inserted.", |d| d.n_tup_ins),
            ("querywatch_table_tup_updated_total", "Tuples updated.", |d| d.n_tup_upd),
            ("querywatch_table_tup_deleted_total", "Tuples deleted.", |d| d.n_tup_del),
            ("querywatch_table_heap_blks_read_total", "Heap blocks read from disk (pg_statio_user_tables).", |d| {
                d.heap_blks_read
            }),
        ];
        for (name, help, get) in tcounters {
            o.family(name, Kind::Counter, help);
            for (k, v) in &tables {
                let labels = [
                    ("node", &*k.node),
                    ("database", &*k.database),
                    ("relation", &*k.relation),
                    ("parent", &*k.parent),
                ];
                o.sample_since(name, &labels, f(get(&v.delta)), v.since);
            }
        }

        let mut nodes: Vec<_> = t.nodes.iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        o.family("querywatch_node_time_seconds_total", Kind::Counter, "Database time per node.");
        for (n, v) in &nodes {
            o.sample_since("querywatch_node_time_seconds_total", &[("node", n)], v.time, v.since);
        }
        o.family("querywatch_node_calls_total", Kind::Counter, "Executions per node.");
        for (n, v) in &nodes {
            o.sample_since("querywatch_node_calls_total", &[("node", n)], f(v.calls), v.since);
        }
        o.family("querywatch_node_batches_total", Kind::Counter, "Batches received per node.");
        for (n, v) in &nodes {
            o.sample_since("querywatch_node_batches_total", &[("node", n)], f(v.batches), v.since);
        }
        o.family("querywatch_node_last_seen_timestamp_seconds", Kind::Gauge, "When the node's agent last sent data.");
        #[allow(clippy::cast_precision_loss)]
        for (n, v) in &nodes {
            o.sample("querywatch_node_last_seen_timestamp_seconds", &[("node", n)], v.last_seen as f64 / 1000.0);
        }
        type IField = fn(&querywatch_wire::observations::InputStats) -> u64;
        let agent: [(&str, &str, IField); 10] = [
            ("querywatch_agent_log_bytes_total", "Log bytes the node's agent read.", |i| i.bytes),
            ("querywatch_agent_invalid_utf8_entries_total", "Log entries with invalid UTF-8 (replaced, kept).", |i| {
                i.invalid_utf8
            }),
            ("querywatch_agent_log_lines_total", "Log lines the node's agent read.", |i| i.lines),
            ("querywatch_agent_log_entries_total", "Log entries the node's agent parsed.", |i| i.entries),
            ("querywatch_agent_parse_failures_total", "Log lines the node's agent could not parse.", |i| i.unparsed),
            ("querywatch_agent_truncated_entries_total", "Log entries truncated at the agent's size cap.", |i| {
                i.truncated
            }),
            ("querywatch_agent_unreadable_files_total", "Log files the node's agent could not read to the end.", |i| {
                i.unreadable_files
            }),
            (
                "querywatch_agent_unattributed_durations_total",
                "Duration lines the node's agent could not tie to a statement.",
                |i| i.unattributed_durations,
            ),
            (
                "querywatch_agent_sessions_forgotten_total",
                "Idle sessions the node's agent forgot at its session cap.",
                |i| i.forgotten_sessions,
            ),
            (
                "querywatch_agent_session_texts_dropped_total",
                "Sessions' last statements the node's agent let go at its text budget.",
                |i| i.dropped_session_texts,
            ),
        ];
        for (name, help, get) in agent {
            o.family(name, Kind::Counter, help);
            for (n, v) in &nodes {
                o.sample_since(name, &[("node", n)], f(get(&v.rest.input)), v.since);
            }
        }
        type HField = fn(&querywatch_wire::health::AgentHealth) -> u64;
        let health: [(&str, &str, HField); 7] = [
            ("querywatch_agent_export_retries_total", "Export requests the node's agent retried.", |h| {
                h.export_retries
            }),
            (
                "querywatch_agent_spool_dropped_batches_total",
                "Batches the node's agent dropped past its spool bound.",
                |h| h.spool_dropped_batches,
            ),
            (
                "querywatch_agent_spool_dropped_bytes_total",
                "Bytes the node's agent dropped past its spool bound.",
                |h| h.spool_dropped_bytes,
            ),
            ("querywatch_agent_poller_reconnects_total", "Statistics poller reconnections.", |h| h.poller_reconnects),
            (
                "querywatch_agent_poller_connect_failures_total",
                "Statistics poller connection attempts that failed.",
                |h| h.poller_connect_failures,
            ),
            ("querywatch_agent_poller_connections_lost_total", "Statistics poller connections lost.", |h| {
                h.poller_connections_lost
            }),
            ("querywatch_agent_poller_poll_failures_total", "Statistics polls that failed.", |h| {
                h.poller_poll_failures
            }),
        ];
        for (name, help, get) in health {
            o.family(name, Kind::Counter, help);
            for (n, v) in &nodes {
                o.sample_since(name, &[("node", n)], f(get(&v.rest.agent)), v.since);
            }
        }
        let name = "querywatch_agent_export_failures_total";
        o.family(name, Kind::Counter, "Export requests of the node's agent that failed, by class.");
        for (n, v) in &nodes {
            let h = &v.rest.agent;
            for (class, x) in [
                ("retryable", h.export_retryable_failures),
                ("throttled", h.export_throttled),
                ("permanent", h.export_permanent_failures),
            ] {
                o.sample_since(name, &[("node", n), ("class", class)], f(x), v.since);
            }
        }
        type GField = fn(&querywatch_wire::health::AgentHealth) -> Option<u64>;
        let gauges: [(&str, &str, GField); 3] = [
            (
                "querywatch_agent_spool_batches",
                "Batches in the node's agent's on-disk spool (collector unreachable).",
                |h| h.spool_batches,
            ),
            ("querywatch_agent_spool_bytes", "Bytes in the node's agent's on-disk spool.", |h| h.spool_bytes),
            (
                "querywatch_agent_last_export_timestamp_seconds",
                "When the node's agent last had a request accepted.",
                |h| h.last_export_unix_s,
            ),
        ];
        for (name, help, get) in gauges {
            o.family(name, Kind::Gauge, help);
            for (n, v) in &nodes {
                if let Some(x) = get(&v.rest.agent) {
                    o.sample(name, &[("node", n)], f(x));
                }
            }
        }
        o.family(
            "querywatch_agent_overflow_calls_total",
            Kind::Counter,
            "Calls the node's agent folded into <other> (its caps).",
        );
        for (n, v) in &nodes {
            o.sample_since("querywatch_agent_overflow_calls_total", &[("node", n)], f(v.rest.overflow_calls), v.since);
        }

        let h = w.health();
        o.family("querywatch_collector_store_fingerprints", Kind::Gauge, "Fingerprints tracked.");
        o.sample("querywatch_collector_store_fingerprints", &[], h.fingerprints as f64);
        o.family(
            "querywatch_collector_store_fingerprints_limit",
            Kind::Gauge,
            "Fingerprints tracked at most ([store] max_fingerprints).",
        );
        o.sample("querywatch_collector_store_fingerprints_limit", &[], w.config().max_fingerprints as f64);
        o.family("querywatch_collector_store_rows", Kind::Gauge, "Rows (fingerprint, database, node, bucket) held.");
        o.sample("querywatch_collector_store_rows", &[], h.rows as f64);
        o.family("querywatch_collector_store_bytes", Kind::Gauge, "Estimated bytes the store's buckets hold.");
        o.sample("querywatch_collector_store_bytes", &[], h.estimated_bytes as f64);
        o.family(
            "querywatch_collector_store_bytes_limit",
            Kind::Gauge,
            "The store's memory limit: its share of [store] memory_limit_mb.",
        );
        o.sample("querywatch_collector_store_bytes_limit", &[], w.config().memory_limit as f64);
        if let Some(rss) = resident_bytes() {
            o.family(
                "process_resident_memory_bytes",
                Kind::Gauge,
                "The collector's resident set size (to compare with [store] memory_limit_mb).",
            );
            o.sample("process_resident_memory_bytes", &[], rss as f64);
        }
        o.family("querywatch_collector_nodes", Kind::Gauge, "Nodes tracked.");
        o.sample("querywatch_collector_nodes", &[], h.nodes as f64);
        o.family(
            "querywatch_collector_overflow",
            Kind::Gauge,
            "What the caps folded into <other> within the retained range, by kind.",
        );
        for (kind, v) in [
            ("fingerprint_calls", h.overflow.query_calls),
            ("relations", h.overflow.tables),
            ("lock_waits", h.overflow.locks),
            ("node_batches", h.overflow.node_batches),
            ("agent_calls", h.overflow.agent_calls),
        ] {
            o.sample("querywatch_collector_overflow", &[("kind", kind)], f(v));
        }
        o.family("querywatch_collector_store_events_total", Kind::Counter, "Store events that lose detail, by kind.");
        for (kind, v) in [
            ("too_old_batches", h.too_old_batches),
            ("evicted_rollups", h.evicted_rollups),
            ("early_rollups", h.early_rollups),
            ("memory_folded_rows", h.memory_folded_rows),
            ("table_series_folded", t.tables_folded),
        ] {
            o.sample("querywatch_collector_store_events_total", &[("kind", kind)], f(v));
        }
        o.family("querywatch_collector_fingerprint_cache_total", Kind::Counter, "Fingerprint cache lookups by result.");
        for (result, v) in [
            ("hit", h.fingerprint_cache_hits),
            ("miss", h.fingerprint_cache_misses),
            ("fallback", h.fingerprint_fallbacks),
        ] {
            o.sample("querywatch_collector_fingerprint_cache_total", &[("result", result)], f(v));
        }
        o.family("querywatch_collector_batches_total", Kind::Counter, "Batches merged into the store.");
        o.sample("querywatch_collector_batches_total", &[], f(h.batches));
    }

    {
        let d = lock(&s.detect);
        o.family(
            "querywatch_partition_load_share",
            Kind::Gauge,
            "A partition's share of its parent's scans + tuples over the detection window.",
        );
        for p in &d.partitions {
            let total = p.scans + p.tuples;
            for part in &p.partitions {
                #[allow(clippy::cast_precision_loss)]
                let share = if total == 0 { 0.0 } else { (part.scans + part.tuples) as f64 / total as f64 };
                let labels = [
                    ("node", &*p.node),
                    ("database", &*p.database),
                    ("parent", &*p.parent),
                    ("relation", &*part.relation),
                ];
                o.sample("querywatch_partition_load_share", &labels, share);
            }
        }
        o.family(
            "querywatch_partition_skew_ratio",
            Kind::Gauge,
            "Busiest partition's load over the mean partition's, per parent and node.",
        );
        for p in &d.partitions {
            let labels = [("node", &*p.node), ("database", &*p.database), ("parent", &*p.parent)];
            o.sample("querywatch_partition_skew_ratio", &labels, p.skew_ratio);
        }
        o.family(
            "querywatch_node_load_share",
            Kind::Gauge,
            "A node's share of the cluster's database time over the detection window.",
        );
        for n in &d.nodes {
            o.sample("querywatch_node_load_share", &[("node", &n.node)], n.share);
        }
        o.family("querywatch_finding", Kind::Gauge, "One series per open finding (value 1).");
        for fi in d.tracker.findings().filter(|f| f.is_open()) {
            let sev =
                serde_json::to_value(fi.severity).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let kind =
                serde_json::to_value(fi.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let labels = [
                ("id", fi.id.as_str()),
                ("kind", kind.as_str()),
                ("severity", sev.as_str()),
                ("subject", fi.subject.as_str()),
                ("node", fi.node.as_deref().unwrap_or("")),
            ];
            o.sample("querywatch_finding", &labels, 1.0);
        }
        o.family(
            "querywatch_collector_findings_kept_out_total",
            Kind::Counter,
            "Findings kept out by [detect.findings] max_open (new ones not opened, or less severe open ones dropped).",
        );
        #[allow(clippy::cast_precision_loss)]
        o.sample("querywatch_collector_findings_kept_out_total", &[], d.tracker.overflow_total() as f64);
        #[allow(clippy::cast_precision_loss)]
        {
            o.family("querywatch_collector_detect_last_run_timestamp_seconds", Kind::Gauge, "When detectors last ran.");
            o.sample("querywatch_collector_detect_last_run_timestamp_seconds", &[], d.at as f64 / 1000.0);
        }
    }
    o.family("querywatch_collector_detect_duration_seconds", Kind::Gauge, "How long the latest detection pass took.");
    #[allow(clippy::cast_precision_loss)]
    o.sample("querywatch_collector_detect_duration_seconds", &[], s.detect_micros.load(Ordering::Relaxed) as f64 / 1e6);
    o.family(
        "querywatch_collector_queue_batches",
        Kind::Gauge,
        "Decoded requests waiting for the store (a request's batches share one slot).",
    );
    o.sample("querywatch_collector_queue_batches", &[], f(s.queued.load(Ordering::Relaxed)));
    o.family(
        "querywatch_collector_queue_capacity",
        Kind::Gauge,
        "Batches the queue holds; when full, senders are told to retry (HTTP 503 / gRPC UNAVAILABLE).",
    );
    o.sample("querywatch_collector_queue_capacity", &[], s.queue_capacity as f64);
    crate::receive::render_metrics(&s.ingest, &mut o);
    let fw = &s.forward;
    let forward = [
        (
            "querywatch_collector_forward_requests_total",
            "Pushes of these metrics to [forward] endpoint, by result.",
            [("ok", &fw.ok), ("failed", &fw.failed)],
        ),
        (
            "querywatch_collector_forward_data_points_total",
            "Data points pushed to [forward] endpoint: accepted, or rejected by the receiver (OTLP partial success).",
            [("accepted", &fw.points), ("rejected", &fw.rejected_points)],
        ),
    ];
    for (name, help, results) in forward {
        o.family(name, Kind::Counter, help);
        for (result, n) in results {
            o.sample(name, &[("result", result)], f(n.load(Ordering::Relaxed)));
        }
    }
    o.family("querywatch_collector_start_timestamp_seconds", Kind::Gauge, "When the collector started.");
    #[allow(clippy::cast_precision_loss)]
    o.sample("querywatch_collector_start_timestamp_seconds", &[], s.started as f64 / 1000.0);
    let _ = now;
    o
}

/// The process's resident set size, from `/proc/self/statm` (Linux; `None`
/// elsewhere). Pages are taken as 4 KiB, the size on every platform the
/// container images are built for.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
