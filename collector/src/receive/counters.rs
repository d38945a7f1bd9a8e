//! What the receiver counts: requests by transport and signal, what was
//! accepted, what was not ours, what was refused and why, bytes, and how
//! long handling took. Atomics, shared through an `Arc` with whoever
//! exposes them (`/metrics`, `/api/v1/*`); [`IngestCounters::snapshot`]
//! copies them into a plain struct.

use crate::exposition::{Exposition, Kind};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// Which OTLP export a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
}

impl Signal {
    /// The item the signal carries, for messages ("data points").
    pub(crate) fn items(self) -> &'static str {
        match self {
            Signal::Metrics => "data points",
            Signal::Logs => "log records",
        }
    }
}

/// Why a request was refused: the `reason` label of the rejected counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No or wrong bearer token (HTTP 401, gRPC UNAUTHENTICATED).
    Unauthenticated,
    /// Body over the size limit, compressed or decompressed (HTTP 413,
    /// gRPC RESOURCE_EXHAUSTED).
    TooLarge,
    /// Not protobuf/JSON/gzip we can read, or data that claims to be ours
    /// and is wrong (HTTP 400, gRPC INVALID_ARGUMENT).
    Malformed,
    /// The store's queue was full (HTTP 429, gRPC UNAVAILABLE).
    Throttled,
    /// Wrong content type or encoding, method or path (HTTP 415/405/404).
    Unsupported,
    /// The body did not arrive in time (HTTP 503 with `Retry-After`): a
    /// slow link is no bad data, and a 400 made senders drop the batch.
    Timeout,
}

/// Longest handling time the latency histogram can hold; longer requests
/// are recorded as this (a request is cut off by the server's timeout
/// well before).
const LATENCY_MAX_US: u64 = 600_000_000;

/// The receiver's counters. One instance per receiver, `Arc`-shared.
#[derive(Debug)]
pub struct IngestCounters {
    grpc_metrics_requests: AtomicU64,
    grpc_logs_requests: AtomicU64,
    http_metrics_requests: AtomicU64,
    http_logs_requests: AtomicU64,
    data_points_accepted: AtomicU64,
    log_records_accepted: AtomicU64,
    data_points_ignored: AtomicU64,
    log_records_ignored: AtomicU64,
    batches_queued: AtomicU64,
    rejected_unauthenticated: AtomicU64,
    rejected_too_large: AtomicU64,
    rejected_malformed: AtomicU64,
    rejected_throttled: AtomicU64,
    rejected_unsupported: AtomicU64,
    rejected_timeout: AtomicU64,
    bytes_received: AtomicU64,
    /// Sum of the handling times, µs (a summary's `_sum`).
    latency_sum_us: AtomicU64,
    /// Handling time of requests that reached decoding, in µs. A mutex
    /// rather than atomic buckets: one short lock per request is nothing
    /// next to decoding it, and HDR gives exact-enough percentiles (2
    /// significant digits, a few KB of memory, fixed).
    latency_us: Mutex<Histogram<u64>>,
}

impl Default for IngestCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestCounters {
    pub fn new() -> IngestCounters {
        // Constant bounds that satisfy hdrhistogram's rules (low ≥ 1,
        // high ≥ 2 × low, sigfig ≤ 5): this cannot fail.
        #[allow(clippy::expect_used)]
        let latency = Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds");
        IngestCounters {
            grpc_metrics_requests: AtomicU64::new(0),
            grpc_logs_requests: AtomicU64::new(0),
            http_metrics_requests: AtomicU64::new(0),
            http_logs_requests: AtomicU64::new(0),
            data_points_accepted: AtomicU64::new(0),
            log_records_accepted: AtomicU64::new(0),
            data_points_ignored: AtomicU64::new(0),
            log_records_ignored: AtomicU64::new(0),
            batches_queued: AtomicU64::new(0),
            rejected_unauthenticated: AtomicU64::new(0),
            rejected_too_large: AtomicU64::new(0),
            rejected_malformed: AtomicU64::new(0),
            rejected_throttled: AtomicU64::new(0),
            rejected_unsupported: AtomicU64::new(0),
            rejected_timeout: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            latency_us: Mutex::new(latency),
        }
    }

    pub(crate) fn request(&self, transport: Transport, signal: Signal) {
        let c = match (transport, signal) {
            (Transport::Grpc, Signal::Metrics) => &self.grpc_metrics_requests,
            (Transport::Grpc, Signal::Logs) => &self.grpc_logs_requests,
            (Transport::Http, Signal::Metrics) => &self.http_metrics_requests,
            (Transport::Http, Signal::Logs) => &self.http_logs_requests,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, reason: Reason) {
        let c = match reason {
            Reason::Unauthenticated => &self.rejected_unauthenticated,
            Reason::TooLarge => &self.rejected_too_large,
            Reason::Malformed => &self.rejected_malformed,
            Reason::Throttled => &self.rejected_throttled,
            Reason::Unsupported => &self.rejected_unsupported,
            Reason::Timeout => &self.rejected_timeout,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn bytes(&self, n: usize) {
        self.bytes_received.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
    }

    /// A request whose data went to the store: `accepted` items in
    /// `batches` batches, `ignored` items that were not ours.
    pub(crate) fn accepted(&self, signal: Signal, accepted: u64, ignored: u64, batches: usize) {
        let (a, i) = match signal {
            Signal::Metrics => (&self.data_points_accepted, &self.data_points_ignored),
            Signal::Logs => (&self.log_records_accepted, &self.log_records_ignored),
        };
        a.fetch_add(accepted, Relaxed);
        i.fetch_add(ignored, Relaxed);
        self.batches_queued.fetch_add(u64::try_from(batches).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn latency(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
        self.latency_sum_us.fetch_add(us, Relaxed);
        // A poisoned lock means a panic while recording, which leaves the
        // histogram valid: keep counting.
        let mut h = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us);
    }

    /// A consistent-enough copy: each counter is read once, not all at
    /// one instant.
    pub fn snapshot(&self) -> IngestSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let h = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let q = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e6 };
        IngestSnapshot {
            requests: RequestCounts {
                grpc_metrics: g(&self.grpc_metrics_requests),
                grpc_logs: g(&self.grpc_logs_requests),
                http_metrics: g(&self.http_metrics_requests),
                http_logs: g(&self.http_logs_requests),
            },
            data_points_accepted: g(&self.data_points_accepted),
            log_records_accepted: g(&self.log_records_accepted),
            data_points_ignored: g(&self.data_points_ignored),
            log_records_ignored: g(&self.log_records_ignored),
            batches_queued: g(&self.batches_queued),
            rejected: RejectedCounts {
                unauthenticated: g(&self.rejected_unauthenticated),
                too_large: g(&self.rejected_too_large),
                malformed: g(&self.rejected_malformed),
                throttled: g(&self.rejected_throttled),
                unsupported: g(&self.rejected_unsupported),
                timeout: g(&self.rejected_timeout),
            },
            bytes_received: g(&self.bytes_received),
            latency: LatencySummary {
                count: h.len(),
                sum_seconds: g(&self.latency_sum_us) as f64 / 1e6,
                p50_seconds: q(0.5),
                p99_seconds: q(0.99),
                max_seconds: if h.is_empty() { 0.0 } else { h.max() as f64 / 1e6 },
            },
        }
    }
}

/// Appends the receiver's counters to the collector's exposition:
/// `querywatch_collector_ingest_*`, base units, `_total` for counters.
/// Every label value is written, zeros included, so rates work from the
/// first scrape.
#[allow(clippy::cast_precision_loss)] // counters exposed as floats, as Prometheus stores them
pub fn render_metrics(counters: &IngestCounters, out: &mut Exposition) {
    let s = counters.snapshot();
    let mut family = |name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]| {
        out.family(name, Kind::Counter, help);
        for (labels, v) in samples {
            out.sample(name, labels, *v as f64);
        }
    };
    let r = &s.requests;
    let (grpc, http) = ("grpc", "http");
    family(
        "querywatch_collector_ingest_requests_total",
        "OTLP export requests received, by transport and signal.",
        &[
            (&[("transport", grpc), ("signal", "metrics")], r.grpc_metrics),
            (&[("transport", grpc), ("signal", "logs")], r.grpc_logs),
            (&[("transport", http), ("signal", "metrics")], r.http_metrics),
            (&[("transport", http), ("signal", "logs")], r.http_logs),
        ],
    );
    family(
        "querywatch_collector_ingest_data_points_total",
        "Data points received: accepted into the store, or ignored as not querywatch data.",
        &[(&[("result", "accepted")], s.data_points_accepted), (&[("result", "ignored")], s.data_points_ignored)],
    );
    family(
        "querywatch_collector_ingest_log_records_total",
        "Log records received: accepted into the store, or ignored as not querywatch data.",
        &[(&[("result", "accepted")], s.log_records_accepted), (&[("result", "ignored")], s.log_records_ignored)],
    );
    family(
        "querywatch_collector_ingest_batches_total",
        "Decoded batches (one per resource) handed to the store.",
        &[(&[], s.batches_queued)],
    );
    let x = &s.rejected;
    family(
        "querywatch_collector_ingest_rejected_total",
        "OTLP requests refused, by reason.",
        &[
            (&[("reason", "unauthenticated")], x.unauthenticated),
            (&[("reason", "too_large")], x.too_large),
            (&[("reason", "malformed")], x.malformed),
            (&[("reason", "throttled")], x.throttled),
            (&[("reason", "unsupported")], x.unsupported),
            (&[("reason", "timeout")], x.timeout),
        ],
    );
    family(
        "querywatch_collector_ingest_received_bytes_total",
        "Request bytes received (HTTP: body as sent; gRPC: decoded message size).",
        &[(&[], s.bytes_received)],
    );
    let l = &s.latency;
    let name = "querywatch_collector_ingest_duration_seconds";
    out.family(name, Kind::Summary, "Time to handle an OTLP request that reached decoding (quantile 1 = max).");
    for (q, v) in [("0.5", l.p50_seconds), ("0.99", l.p99_seconds), ("1", l.max_seconds)] {
        out.sample(name, &[("quantile", q)], v);
    }
    out.sample(&format!("{name}_sum"), &[], l.sum_seconds);
    out.sample(&format!("{name}_count"), &[], l.count as f64);
}

/// [`IngestCounters`] at one moment, for `/metrics` and the JSON API.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IngestSnapshot {
    /// Requests that reached an export endpoint (before any check).
    pub requests: RequestCounts,
    /// Data points handed to the store.
    pub data_points_accepted: u64,
    /// Log records handed to the store.
    pub log_records_accepted: u64,
    /// Data points accepted but skipped: not querywatch data.
    pub data_points_ignored: u64,
    /// Log records accepted but skipped: not querywatch data.
    pub log_records_ignored: u64,
    /// [`super::Batch`]es handed to the store.
    pub batches_queued: u64,
    /// Requests refused, by reason.
    pub rejected: RejectedCounts,
    /// Request bytes as received (HTTP: the body before decompression;
    /// gRPC: the decoded message's protobuf size, as tonic does not expose
    /// the wire size).
    pub bytes_received: u64,
    /// Time from a request's arrival at the export handler to its answer,
    /// for requests that got as far as decoding.
    pub latency: LatencySummary,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub grpc_metrics: u64,
    pub grpc_logs: u64,
    pub http_metrics: u64,
    pub http_logs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RejectedCounts {
    pub unauthenticated: u64,
    pub too_large: u64,
    pub malformed: u64,
    pub throttled: u64,
    pub unsupported: u64,
    pub timeout: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub sum_seconds: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency() {
        let c = IngestCounters::new();
        c.request(Transport::Grpc, Signal::Metrics);
        c.request(Transport::Http, Signal::Logs);
        c.rejected(Reason::TooLarge);
        c.accepted(Signal::Metrics, 5, 2, 1);
        for ms in 1..=100 {
            c.latency(Duration::from_millis(ms));
        }
        c.latency(Duration::from_secs(100_000));
        let s = c.snapshot();
        assert_eq!(s.requests, RequestCounts { grpc_metrics: 1, grpc_logs: 0, http_metrics: 0, http_logs: 1 });
        assert_eq!(s.rejected.too_large, 1);
        assert_eq!((s.data_points_accepted, s.data_points_ignored, s.batches_queued), (5, 2, 1));
        assert_eq!(s.latency.count, 101);
        assert!((s.latency.p50_seconds - 0.051).abs() < 0.001, "{:?}", s.latency);
        assert!((s.latency.max_seconds - 600.0).abs() < 6.0, "{:?}", s.latency);
        assert_eq!(IngestCounters::new().snapshot().latency, LatencySummary::default());

        let mut e = Exposition::default();
        render_metrics(&c, &mut e);
        let text = e.text();
        for line in [
            "querywatch_collector_ingest_requests_total{transport=\"grpc\",signal=\"metrics\"} 1",
            "querywatch_collector_ingest_requests_total{transport=\"grpc\",signal=\"logs\"} 0",
            "querywatch_collector_ingest_data_points_total{result=\"ignored\"} 2",
            "querywatch_collector_ingest_batches_total 1",
            "querywatch_collector_ingest_rejected_total{reason=\"too_large\"} 1",
            "querywatch_collector_ingest_duration_seconds_count 101",
            "# TYPE querywatch_collector_ingest_duration_seconds summary",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        let p99 = text.lines().find(|l| l.contains("quantile=\"0.99\"")).unwrap();
        let v: f64 = p99.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 0.1).abs() < 0.002, "{p99}");
    }
}
