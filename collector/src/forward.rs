//! `[forward]`: pushes the collector's own derived metrics — the families
//! `/metrics` shows ([`crate::metrics::exposition`]) — to an OTLP/HTTP
//! receiver every `interval`: an OpenTelemetry Collector, or any backend
//! that takes OTLP, for users who do not scrape with Prometheus.
//!
//! Counters and histograms are cumulative since the collector started, as
//! in `/metrics`, so a push that fails loses nothing: the next one carries
//! the same totals, and there is nothing to queue or retry. A failure is
//! counted (`querywatch_collector_forward_requests_total{result="failed"}`)
//! and said once, and once more when pushes work again.
//!
//! The mapping: a counter is a monotonic cumulative Sum named without its
//! `_total` suffix (OTLP-to-Prometheus translation adds it back), a gauge a
//! Gauge, a histogram an explicit-bucket Histogram (bounds from `le`,
//! per-bucket counts from the cumulative ones), a summary a Summary.
//! Labels become data point attributes.

use crate::exposition::{Exposition, Family, Kind, Sample};
use crate::serve::{Shared, now_ms};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, Summary, SummaryDataPoint, metric::Data, number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use querywatch_wire::error_chain;
use querywatch_wire::otlp::{kv_str, points};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The resolved `[forward]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardConfig {
    /// Where requests are POSTed (`…/v1/metrics`).
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    pub gzip: bool,
}

/// What forwarding did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Data points the receiver accepted (sent less those it said it rejected).
    pub points: AtomicU64,
    /// Data points the receiver said it rejected (OTLP partial success).
    pub rejected_points: AtomicU64,
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| kv_str(k, v)).collect()
}

fn number(s: &Sample, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(&s.labels),
        start_time_unix_nano: s.start.map_or(start, nanos),
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(s.value)),
        ..NumberDataPoint::default()
    }
}

/// One histogram or summary series: the `le` or `quantile` values with the
/// sample values, `_sum`, `_count`, and when it began counting (ms).
#[derive(Default)]
struct Series {
    points: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
    start: Option<i64>,
}

/// A histogram's or summary's samples grouped into series by their labels
/// without `le`/`quantile`.
fn series(f: &Family, by: &str) -> BTreeMap<Vec<(String, String)>, Series> {
    let mut out: BTreeMap<_, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        let at = labels.iter().position(|(k, _)| k == by).map(|i| labels.remove(i).1);
        let e = out.entry(labels).or_default();
        e.start = e.start.or(s.start);
        match s.name.strip_prefix(f.name.as_str()) {
            Some("_sum") => e.sum = s.value,
            Some("_count") => e.count = s.value,
            _ => {
                if let Some(bound) = at.and_then(|b| b.parse::<f64>().ok()) {
                    e.points.push((bound, s.value));
                }
            }
        }
    }
    for e in out.values_mut() {
        e.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counts, exposed as floats
fn count(v: f64) -> u64 {
    v.max(0.0) as u64
}

fn metric(f: &Family, start: u64, now: u64) -> Metric {
    let data = match f.kind {
        Kind::Counter => Data::Sum(Sum {
            data_points: f.samples.iter().map(|s| number(s, start, now)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        Kind::Gauge => Data::Gauge(Gauge { data_points: f.samples.iter().map(|s| number(s, 0, now)).collect() }),
        Kind::Histogram => Data::Histogram(Histogram {
            data_points: series(f, "le")
                .into_iter()
                .map(|(labels, Series { points: buckets, sum, count: total, start: since })| {
                    // Prometheus buckets are cumulative and end with +Inf;
                    // OTLP's are per bucket, with the +Inf one implied by
                    // one more count than bounds.
                    let bounds = buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
                    let mut below = 0;
                    let mut counts: Vec<u64> = buckets
                        .iter()
                        .map(|&(_, c)| {
                            let n = count(c).saturating_sub(below);
                            below = below.max(count(c));
                            n
                        })
                        .collect();
                    if buckets.last().is_none_or(|b| b.0.is_finite()) {
                        counts.push(count(total).saturating_sub(below));
                    }
                    HistogramDataPoint {
                        attributes: attributes(&labels),
                        start_time_unix_nano: since.map_or(start, nanos),
                        time_unix_nano: now,
                        count: count(total),
                        sum: Some(sum),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..HistogramDataPoint::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        Kind::Summary => Data::Summary(Summary {
            data_points: series(f, "quantile")
                .into_iter()
                .map(|(labels, Series { points: quantiles, sum, count: total, start: since })| SummaryDataPoint {
                    attributes: attributes(&labels),
                    start_time_unix_nano: since.map_or(start, nanos),
                    time_unix_nano: now,
                    count: count(total),
                    sum,
                    quantile_values: quantiles
                        .into_iter()
                        .map(|(quantile, value)| ValueAtQuantile { quantile, value })
                        .collect(),
                    ..SummaryDataPoint::default()
                })
                .collect(),
        }),
    };
    let name = match f.kind {
        Kind::Counter => f.name.strip_suffix("_total").unwrap_or(&f.name),
        _ => &f.name,
    };
    Metric { name: name.to_owned(), description: f.help.clone(), data: Some(data), ..Metric::default() }
}

/// The exposition as one OTLP request. `start` (ns) is when the
/// collector started: the start of every cumulative series.
pub fn to_otlp(e: &Exposition, instance: &str, start: u64, now: u64) -> ExportMetricsServiceRequest {
    let metrics: Vec<Metric> = e.families.iter().map(|f| metric(f, start, now)).filter(|m| points(m) > 0).collect();
    let resource = Resource {
        attributes: vec![
            kv_str("service.name", "querywatch-collector"),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
            kv_str("service.instance.id", instance),
        ],
        ..Resource::default()
    };
    let scope = InstrumentationScope { name: "querywatch-collector".into(), ..InstrumentationScope::default() };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

fn nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

/// What the receiver refused of a push that it took (OTLP partial success).
#[derive(Debug, Default, PartialEq, Eq)]
struct Refused {
    points: u64,
    /// The receiver's reason, when it gave one.
    message: String,
}

/// One push: the request's data points and what the receiver answered.
async fn push(client: &reqwest::Client, cfg: &ForwardConfig, body: Vec<u8>) -> Result<Refused, String> {
    let mut req = client.post(&cfg.url).header("content-type", "application/x-protobuf").timeout(cfg.timeout);
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t);
    }
    let body = if cfg.gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).and_then(|()| gz.finish()).map_err(|e| format!("gzip: {e}"))?
    } else {
        body
    };
    if cfg.gzip {
        req = req.header("content-encoding", "gzip");
    }
    // With its causes: reqwest's own message leaves out why (connection
    // refused, a timeout, the TLS failure).
    let resp = req.body(body).send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    // An empty body is a full success; a partial success names what it refused.
    let refused = ExportMetricsServiceResponse::decode(&bytes[..]).ok().and_then(|r| r.partial_success).map_or_else(
        Refused::default,
        |p| Refused { points: u64::try_from(p.rejected_data_points).unwrap_or(0), message: p.error_message },
    );
    Ok(refused)
}

/// Pushes every `cfg.interval` until `stop` resolves.
pub async fn run(shared: Arc<Shared>, cfg: ForwardConfig, stop: impl std::future::Future<Output = ()>) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("querywatch collector: [forward] disabled: cannot build an HTTP client: {e}");
            return;
        }
    };
    let instance = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| shared.config.listen.to_string());
    let counters = &shared.forward;
    let mut failing = false;
    // Said once when a receiver starts refusing points, and again only
    // after a push it took whole.
    let mut refusing = false;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let inst = instance.clone();
        // Building the exposition takes the store's lock: off the I/O threads.
        let Ok((body, sent)) = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let req = to_otlp(&crate::metrics::exposition(&s, now), &inst, nanos(s.started), nanos(now));
            let sent: u64 =
                req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).map(points).sum();
            (req.encode_to_vec(), sent)
        })
        .await
        else {
            continue;
        };
        // A push in flight does not hold up shutdown: the totals it carried
        // are in the next collector's first push anyway (they are cumulative).
        let result = tokio::select! {
            biased;
            () = &mut stop => return,
            r = push(&client, &cfg, body) => r,
        };
        match result {
            Ok(refused) => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
                counters.points.fetch_add(sent.saturating_sub(refused.points), Ordering::Relaxed);
                counters.rejected_points.fetch_add(refused.points, Ordering::Relaxed);
                if failing {
                    eprintln!("querywatch collector: forwarding to {} works again", cfg.url);
                    failing = false;
                }
                if refused.points > 0 && !refusing {
                    let why = if refused.message.is_empty() { "no reason given" } else { &refused.message };
                    eprintln!(
                        "querywatch collector: {} refused {} of {sent} forwarded data points: {why} \
                         (counted in querywatch_collector_forward_data_points_total{{result=\"rejected\"}}; \
                         said again only after a push it takes whole)",
                        cfg.url, refused.points
                    );
                }
                refusing = refused.points > 0;
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    eprintln!(
                        "querywatch collector: forwarding metrics to {} failed: {e}; trying again every {:?} \
                         (counted in querywatch_collector_forward_requests_total{{result=\"failed\"}}; \
                         totals are cumulative, so the next push that works carries everything)",
                        cfg.url, cfg.interval
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    fn exposition() -> Exposition {
        let mut e = Exposition::default();
        e.family("q_calls_total", Kind::Counter, "Calls.");
        e.sample_since("q_calls_total", &[("fingerprint", "ab"), ("node", "n1")], 7.0, 3);
        e.sample("q_calls_total", &[("fingerprint", "cd"), ("node", "n1")], 1.0);
        e.family("up", Kind::Gauge, "Up.");
        e.sample("up", &[], 1.0);
        e.family("empty", Kind::Gauge, "No samples: not sent.");
        e.family("d_seconds", Kind::Histogram, "Durations.");
        for (node, counts) in [("n1", [1.0, 3.0, 3.0, 4.0]), ("n2", [0.0, 0.0, 2.0, 2.0])] {
            for (le, c) in ["0.1", "1", "10", "+Inf"].iter().zip(counts) {
                e.sample("d_seconds_bucket", &[("node", node), ("le", le)], c);
            }
            e.sample("d_seconds_sum", &[("node", node)], 12.5);
            e.sample("d_seconds_count", &[("node", node)], counts[3]);
        }
        e.family("lat", Kind::Summary, "Latency.");
        e.sample("lat", &[("quantile", "0.5")], 0.2);
        e.sample("lat", &[("quantile", "1")], 0.9);
        e.sample("lat_sum", &[], 3.0);
        e.sample("lat_count", &[], 10.0);
        e
    }

    #[test]
    fn families_map_to_otlp_kinds_with_known_answers() {
        let r = to_otlp(&exposition(), "c1", 5, 9);
        let rm = &r.resource_metrics[0];
        let attrs = &rm.resource.as_ref().unwrap().attributes;
        assert!(attrs.iter().any(|a| a.key == "service.name"));
        let m = &rm.scope_metrics[0].metrics;
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["q_calls", "up", "d_seconds", "lat"], "`_total` dropped, empty families left out");

        let Some(Data::Sum(sum)) = &m[0].data else { panic!("{:?}", m[0]) };
        assert!(sum.is_monotonic && sum.aggregation_temporality == AggregationTemporality::Cumulative as i32);
        let p = &sum.data_points[0];
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (3_000_000, 9), "the series' own start");
        assert_eq!(sum.data_points[1].start_time_unix_nano, 5, "else the collector's");
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(7.0)));
        assert_eq!(p.attributes.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["fingerprint", "node"]);

        let Some(Data::Histogram(h)) = &m[2].data else { panic!("{:?}", m[2]) };
        assert_eq!(h.data_points.len(), 2, "one point per node");
        let n1 = &h.data_points[0];
        assert_eq!(n1.explicit_bounds, [0.1, 1.0, 10.0]);
        assert_eq!(n1.bucket_counts, [1, 2, 0, 1], "per bucket, from the cumulative counts");
        assert_eq!((n1.count, n1.sum), (4, Some(12.5)));
        assert!(n1.attributes.iter().all(|a| a.key != "le"));
        assert_eq!(h.data_points[1].bucket_counts, [0, 0, 2, 0]);

        let Some(Data::Summary(s)) = &m[3].data else { panic!("{:?}", m[3]) };
        let p = &s.data_points[0];
        assert_eq!((p.count, p.sum), (10, 3.0));
        assert_eq!(
            p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect::<Vec<_>>(),
            [(0.5, 0.2), (1.0, 0.9)]
        );
    }
}
