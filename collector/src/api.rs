//! The HTTP listener (default :8080): `/metrics` for Prometheus, the JSON
//! API under `/api/v1/`, `/healthz`, `/readyz`, and the web page at `/`.
//!
//! Every handler builds what it needs from a snapshot taken under the
//! store's lock, then renders outside it. Time ranges: `range=15m`
//! (ending now; default: the detection window) or `from`/`to` in
//! milliseconds since the epoch.

use crate::fingerprint::{Fingerprint, Method};
use crate::serve::{Shared, lock, now_ms};
use crate::snapshot::{FingerprintRow, RowStats};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use querywatch_wire::stats::EpochMillis;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The API's OpenAPI 3.1 document (tests/it/openapi.rs checks it).
const OPENAPI: &str = include_str!("../openapi.json");

/// Routes of the HTTP listener.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/queries", get(queries))
        .route("/api/v1/queries/{fingerprint}", get(query))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/partitions", get(partitions))
        .route("/api/v1/nodes", get(nodes))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_token));
    Router::new()
        .route("/", get(crate::page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The API's description, open like the page that reads the API.
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: see the README's API section") })
        .with_state(shared)
}

/// Runs `f`, which waits for the store's lock and copies out of it, without
/// stalling the runtime's other tasks (OTLP ingest shares the runtime).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// A request the API cannot answer, and why (rendered by [`error`]).
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The API behind `[http] token`, when set (`/metrics` and probes stay open).
async fn require_token(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.config.api_token {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes())) {
            let mut r = error(StatusCode::UNAUTHORIZED, "this API needs `Authorization: Bearer <token>`");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    // Rendering takes the store's lock: off the runtime's threads.
    let Ok(body) = tokio::task::spawn_blocking(move || crate::metrics::render(&s, now_ms())).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "rendering /metrics failed");
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// A time range from the query string.
#[derive(Debug, Default, Deserialize)]
pub struct RangeParams {
    /// Length of the range ending now, e.g. `15m`.
    pub range: Option<String>,
    /// Start, ms since the epoch.
    #[serde(default, deserialize_with = "epoch_millis")]
    pub from: Option<EpochMillis>,
    /// End, ms since the epoch (default now).
    #[serde(default, deserialize_with = "epoch_millis")]
    pub to: Option<EpochMillis>,
}

/// `from`/`to` as a number, or as a string: inside a `#[serde(flatten)]`
/// struct (the queries endpoint's parameters) the query-string decoder
/// hands every value over as a string, and a plain `i64` field refused it.
fn epoch_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EpochMillis>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Millis {
        Int(EpochMillis),
        Text(String),
    }
    match Option::<Millis>::deserialize(d)? {
        None => Ok(None),
        Some(Millis::Int(i)) => Ok(Some(i)),
        Some(Millis::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a time in ms since the epoch"))),
    }
}

impl RangeParams {
    fn resolve(&self, s: &Shared, now: EpochMillis) -> Result<(EpochMillis, EpochMillis), ApiError> {
        // Times are clamped to [1970, far future], so that no difference of
        // two of them (here or in the store) can overflow, whatever a
        // client sends.
        let clamp = |t: EpochMillis| t.clamp(0, EpochMillis::MAX / 4);
        let to = clamp(self.to.unwrap_or(now + 1));
        let from = clamp(match (&self.from, &self.range) {
            (Some(f), _) => *f,
            (None, Some(r)) => {
                let d = humantime_serde::re::humantime::parse_duration(r).map_err(|e| {
                    ApiError(StatusCode::BAD_REQUEST, format!("range `{r}`: {e} (write it like 15m or 2h)"))
                })?;
                to - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
            }
            (None, None) => to - i64::try_from(s.config.detect_window.as_millis()).unwrap_or(i64::MAX / 4),
        });
        if from >= to {
            return Err(ApiError(StatusCode::BAD_REQUEST, "`from` must be before `to`".into()));
        }
        Ok((from, to))
    }
}

fn ms3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One statement in API answers.
#[derive(Debug, Serialize)]
pub struct QuerySummary {
    pub fingerprint: String,
    pub text: String,
    /// False when pg_query could not parse the shape (fallback fingerprint).
    pub parsed: bool,
    /// Executions (pg_stat_statements' count when the statistics source has it).
    pub calls: u64,
    /// Executions with a logged duration (what the percentiles are of).
    pub logged_calls: u64,
    /// Database time, ms.
    pub total_ms: f64,
    /// Share of all database time in the range (0..1).
    pub share: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rows: Option<u64>,
    pub errors: u64,
    pub temp_bytes: u64,
    pub shared_blks_hit: u64,
    pub shared_blks_read: u64,
    pub queryid: Option<String>,
    pub nodes: Vec<String>,
    pub databases: Vec<String>,
}

fn summary(fp: Fingerprint, text: &str, method: Method, st: &RowStats, total: Duration) -> QuerySummary {
    let total_s = total.as_secs_f64();
    QuerySummary {
        fingerprint: fp.to_string(),
        text: text.to_owned(),
        parsed: method == Method::Parsed,
        calls: st.exec_calls(),
        logged_calls: st.calls,
        total_ms: ms3(st.db_time()),
        share: if total_s > 0.0 { (st.db_time().as_secs_f64() / total_s * 1e4).round() / 1e4 } else { 0.0 },
        mean_ms: ms3(st.mean()),
        p50_ms: ms3(st.quantile(0.5)),
        p95_ms: ms3(st.quantile(0.95)),
        p99_ms: ms3(st.quantile(0.99)),
        max_ms: ms3(st.max),
        rows: st.rows_returned(),
        errors: st.error_count(),
        temp_bytes: st.temp_bytes,
        shared_blks_hit: st.pgss.shared_blks_hit,
        shared_blks_read: st.pgss.shared_blks_read,
        queryid: st.queryid.map(|q| q.to_string()),
        nodes: Vec::new(),
        databases: Vec::new(),
    }
}

fn row_summary(r: &FingerprintRow, total: Duration) -> QuerySummary {
    let mut s = summary(r.fingerprint, &r.text, r.method, &r.stats, total);
    s.nodes = r.nodes.iter().map(|n| n.to_string()).collect();
    s.nodes.sort();
    s.databases = r.databases.iter().map(|n| n.to_string()).collect();
    s.databases.sort();
    s
}

#[derive(Debug, Deserialize)]
pub struct QueriesParams {
    #[serde(flatten)]
    pub range: RangeParams,
    pub node: Option<String>,
    pub database: Option<String>,
    /// `time` (default), `calls`, `mean`, `p95`, `p99`, `max`, `errors`, `rows`.
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    pub order: Option<String>,
    /// Rows returned (default 50, at most 1000).
    pub limit: Option<usize>,
    /// `1`: each returned row carries `series`, its buckets over the range
    /// (`start`, `seconds`, `calls`, `p95_ms`), for sparklines. Computed for
    /// the returned rows only, so at most [`SERIES_MAX_ROWS`] of them.
    pub series: Option<String>,
}

/// The most rows `series=1` is computed for (one pass over the buckets each).
pub const SERIES_MAX_ROWS: usize = 100;

async fn queries(State(s): State<Arc<Shared>>, Query(p): Query<QueriesParams>) -> Response {
    let now = now_ms();
    let (from, to) = match p.range.resolve(&s, now) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let snap = blocking(|| lock(&s.windows).by_fingerprint(from, to, p.node.as_deref(), p.database.as_deref(), None));
    let (total, span) = (snap.total, (snap.from, snap.to));
    let sort = p.sort.as_deref().unwrap_or("time");
    // Ranked on the merged statistics, and summaries (text copies, node
    // lists, quantiles) built only for the rows returned: with a full store
    // of 50,000 fingerprints, summarising them all before the cut took
    // about 100 MiB for an answer of 50 rows. Durations are rounded as the
    // summaries show them, so ties break on the fingerprint the same way.
    let key: fn(&RowStats) -> f64 = match sort {
        "time" => |st| ms3(st.db_time()),
        "calls" => |st| st.exec_calls() as f64,
        "mean" => |st| ms3(st.mean()),
        "p95" => |st| ms3(st.quantile(0.95)),
        "p99" => |st| ms3(st.quantile(0.99)),
        "max" => |st| ms3(st.max),
        "errors" => |st| st.error_count() as f64,
        "rows" => |st| st.rows_returned().unwrap_or(0) as f64,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("sort `{other}`: use one of time, calls, mean, p95, p99, max, errors, rows"),
            );
        }
    };
    let asc = match p.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return error(StatusCode::BAD_REQUEST, format!("order `{o}`: use asc or desc")),
    };
    let mut ranked: Vec<(f64, usize)> = snap.rows.iter().enumerate().map(|(i, r)| (key(&r.stats), i)).collect();
    ranked.sort_by(|(ka, a), (kb, b)| {
        let c = ka.total_cmp(kb);
        (if asc { c } else { c.reverse() }).then(snap.rows[*a].fingerprint.cmp(&snap.rows[*b].fingerprint))
    });
    let found = ranked.len();
    let limit = p.limit.unwrap_or(50).min(1000);
    let with_series = match p.series.as_deref() {
        None | Some("0") => false,
        Some("1") if limit <= SERIES_MAX_ROWS => true,
        Some("1") => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("series=1 is for at most {SERIES_MAX_ROWS} rows: ask for limit={SERIES_MAX_ROWS} or fewer"),
            );
        }
        Some(v) => return error(StatusCode::BAD_REQUEST, format!("series `{v}`: use 1 or 0")),
    };
    ranked.truncate(limit);
    let rows: Vec<QuerySummary> = ranked.iter().map(|(_, i)| row_summary(&snap.rows[*i], total)).collect();
    drop(snap);
    if !with_series {
        return axum::Json(json!({
            "from": span.0, "to": span.1, "total_ms": ms3(total), "found": found, "queries": rows,
        }))
        .into_response();
    }
    // After sorting and the limit: only the rows returned pay for a series.
    let series: Vec<Vec<Value>> = blocking(|| {
        let w = lock(&s.windows);
        rows.iter()
            .map(|q| {
                let fp = Fingerprint::from_hex(&q.fingerprint).unwrap_or(Fingerprint(0));
                w.series(fp, (from, to), p.node.as_deref(), p.database.as_deref())
                    .iter()
                    .map(|(start, len, by_node)| {
                        let mut m = RowStats::default();
                        for st in by_node.values() {
                            m.merge(st);
                        }
                        json!({"start": start, "seconds": len / 1000, "calls": m.exec_calls(),
                               "p95_ms": ms3(m.quantile(0.95))})
                    })
                    .collect()
            })
            .collect()
    });
    let rows: Vec<Value> = rows
        .iter()
        .zip(series)
        .map(|(q, series)| {
            let mut v = serde_json::to_value(q).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("series".into(), Value::Array(series));
            }
            v
        })
        .collect();
    axum::Json(json!({
        "from": span.0, "to": span.1, "total_ms": ms3(total), "found": found, "queries": rows,
    }))
    .into_response()
}

async fn query(
    State(s): State<Arc<Shared>>,
    Path(fingerprint): Path<String>,
    Query(p): Query<RangeParams>,
) -> Response {
    let Some(fp) = Fingerprint::from_hex(&fingerprint) else {
        return error(StatusCode::BAD_REQUEST, format!("`{fingerprint}` is not a fingerprint (16 hex digits)"));
    };
    let now = now_ms();
    let (from, to) = match p.resolve(&s, now) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Only this fingerprint's rows are copied, and the total (the base of
    // its share) is summed without copying the others: a full snapshot
    // here took as much memory again as the whole store, for every call.
    let (snap, total, series, known) = blocking(|| {
        let w = lock(&s.windows);
        let one = std::iter::once(fp).collect();
        let total = w.by_fingerprint(from, to, None, None, Some(fp)).total;
        (w.snapshot_of(from, to, &one), total, w.series(fp, (from, to), None, None), w.fingerprint_text(fp))
    });
    let Some((text, method)) = known else {
        return error(StatusCode::NOT_FOUND, format!("fingerprint {fp} is not known (expired or never seen)"));
    };
    let mut all = RowStats::default();
    let mut per_node = Vec::new();
    // A node's row merges its databases: list them from the unmerged rows
    // (the detail answer's `databases` were always empty before).
    let mut databases: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for q in snap.queries.iter().filter(|q| q.fingerprint == fp) {
        databases.entry(&q.node).or_default().insert(q.database.to_string());
    }
    for r in snap.by_fingerprint_and_node().iter().filter(|r| r.fingerprint == fp) {
        all.merge(&r.stats);
        let mut n = summary(fp, &r.text, r.method, &r.stats, total);
        n.nodes = vec![r.node.to_string()];
        n.databases = databases.get(&*r.node).map(|d| d.iter().cloned().collect()).unwrap_or_default();
        per_node.push(n);
    }
    per_node.sort_by(|a, b| a.nodes.cmp(&b.nodes));
    let series: Vec<Value> = series
        .iter()
        .map(|(start, len, by_node)| {
            let mut m = RowStats::default();
            for st in by_node.values() {
                m.merge(st);
            }
            let nodes: serde_json::Map<String, Value> = by_node
                .iter()
                .map(|(n, st)| {
                    let v =
                        json!({"calls": st.exec_calls(), "p95_ms": ms3(st.quantile(0.95)), "mean_ms": ms3(st.mean())});
                    (n.to_string(), v)
                })
                .collect();
            json!({
                "start": start, "seconds": len / 1000, "calls": m.exec_calls(), "total_ms": ms3(m.db_time()),
                "mean_ms": ms3(m.mean()), "p50_ms": ms3(m.quantile(0.5)), "p95_ms": ms3(m.quantile(0.95)),
                "p99_ms": ms3(m.quantile(0.99)), "max_ms": ms3(m.max), "nodes": nodes,
            })
        })
        .collect();
    let sample =
        all.slowest.as_ref().map(|x| json!({"duration_ms": ms3(x.duration), "timestamp": x.timestamp, "text": x.text}));
    let plan = all.slowest_plan.as_ref().map(|p| {
        let insights = crate::plan::analyze_plan(&p.plan).ok();
        json!({"duration_ms": ms3(p.duration), "timestamp": p.timestamp, "format": p.format, "plan": p.plan, "insights": insights})
    });
    let errors: Vec<Value> = all
        .errors
        .iter()
        .map(|(state, e)| json!({"sqlstate": state, "count": e.count, "message": e.message}))
        .collect();
    let subject = format!("fingerprint:{fp}");
    let findings: Vec<Value> = lock(&s.detect)
        .tracker
        .findings()
        .filter(|f| f.subject == subject)
        .filter_map(|f| serde_json::to_value(f).ok())
        .collect();
    let mut head = summary(fp, &text, method, &all, total);
    head.nodes = per_node.iter().flat_map(|n| n.nodes.clone()).collect();
    head.databases = databases.into_values().flatten().collect::<BTreeSet<_>>().into_iter().collect();
    axum::Json(json!({
        "from": snap.from, "to": snap.to, "query": head, "per_node": per_node, "series": series,
        "slowest": sample, "plan": plan, "errors": errors, "findings": findings,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct FindingsParams {
    /// `open` (default), `resolved` or `all`.
    pub state: Option<String>,
}

async fn findings(State(s): State<Arc<Shared>>, Query(p): Query<FindingsParams>) -> Response {
    let want = p.state.as_deref().unwrap_or("open");
    if !matches!(want, "open" | "resolved" | "all") {
        return error(StatusCode::BAD_REQUEST, format!("state `{want}`: use open, resolved or all"));
    }
    let d = lock(&s.detect);
    let list: Vec<Value> = d
        .tracker
        .findings()
        .filter(|f| want == "all" || (want == "open") == f.is_open())
        .filter_map(|f| serde_json::to_value(f).ok())
        .collect();
    axum::Json(json!({ "evaluated_at": d.at, "findings": list })).into_response()
}

async fn partitions(State(s): State<Arc<Shared>>, Query(p): Query<RangeParams>) -> Response {
    let now = now_ms();
    let (from, to) = match p.resolve(&s, now) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let snap = blocking(|| lock(&s.windows).snapshot(from, to, None));
    axum::Json(json!({ "from": snap.from, "to": snap.to, "parents": crate::load::partitions(&snap) })).into_response()
}

async fn nodes(State(s): State<Arc<Shared>>, Query(p): Query<RangeParams>) -> Response {
    let now = now_ms();
    let (from, to) = match p.resolve(&s, now) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let snap = blocking(|| lock(&s.windows).snapshot(from, to, None));
    let load = crate::load::nodes(&snap);
    let list: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| {
            let l = load.iter().find(|l| l.node == n.node);
            let r = &n.resource;
            json!({
                "node": n.node, "cluster": r.cluster, "host": r.host_name, "server_address": r.server_address,
                "server_port": r.server_port, "agent_version": r.service_version, "agent_instance": r.service_instance_id,
                "last_seen": n.last_seen, "seconds_since_seen": (now - n.last_seen) / 1000,
                "db_time_seconds": l.map_or(0.0, |l| l.db_time_seconds), "calls": l.map_or(0, |l| l.calls),
                "share": l.map_or(0.0, |l| l.share), "vs_median": l.map_or(0.0, |l| l.vs_median),
                "input": n.rest.input, "log_classes": n.rest.classes,
            })
        })
        .collect();
    axum::Json(json!({ "from": snap.from, "to": snap.to, "nodes": list })).into_response()
}
