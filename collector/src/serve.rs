//! The running collector: OTLP receivers → a bounded queue → one ingest
//! task that merges batches into the window store; a detection pass every
//! `detect.interval`; and the HTTP listener for `/metrics`, the JSON API
//! and the web page.
//!
//! One task owns ingest, so the store needs only a mutex, held for one
//! batch at a time; readers (API, `/metrics`, detectors) take it to build
//! a snapshot and release it before any rendering or detection.

use crate::config::Config;
use crate::findings::{Finding, FindingTracker, detect_live};
use crate::load::{NodeLoad, ParentLoad};
use crate::receive::{self, Batch, IngestCounters, ReceiverConfig};
use crate::snapshot::Snapshot;
use crate::window::{MINUTE_MS, Windows};
use querywatch_wire::stats::EpochMillis;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} for the API and /metrics: {source} (port in use? set [http] listen or --listen)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Receive(#[from] receive::ReceiveError),
}

/// What the latest detection pass found and measured.
#[derive(Debug, Default)]
pub struct DetectState {
    pub tracker: FindingTracker,
    /// Partition load over the detection window.
    pub partitions: Vec<ParentLoad>,
    /// Node load over the detection window.
    pub nodes: Vec<NodeLoad>,
    /// When the pass ran (ms), 0 before the first.
    pub at: EpochMillis,
}

/// State shared by the tasks and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub windows: Mutex<Windows>,
    pub detect: Mutex<DetectState>,
    pub ingest: Arc<IngestCounters>,
    /// Batches waiting in the queue.
    pub queued: AtomicU64,
    pub queue_capacity: usize,
    /// True once every listener is bound and the ingest task runs.
    pub ready: AtomicBool,
    pub started: EpochMillis,
    pub detect_passes: AtomicU64,
    /// Detection pass duration, µs, of the latest pass.
    pub detect_micros: AtomicU64,
    /// What `[forward]` did (all zero when it is off).
    pub forward: crate::forward::ForwardCounters,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> EpochMillis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Locks a mutex; a panic elsewhere while holding it leaves data that is
/// still consistent for reading (every update is one merge), so go on.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// The detection window ending now, and the baseline before it.
    pub fn window_snapshot(&self, now: EpochMillis, node: Option<&str>) -> Snapshot {
        lock(&self.windows).snapshot(now - ms(self.config.detect_window), now + 1, node)
    }
}

/// A started collector.
pub struct Running {
    pub grpc: Option<SocketAddr>,
    pub otlp_http: Option<SocketAddr>,
    pub api: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops listening, drains what was queued into the store, and returns.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until `signal` resolves, then stops.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Where a detection pass at `now` looks (ms): the window's start (it runs
/// to `now`), and the baseline's range. A snapshot counts every minute
/// bucket it overlaps whole, so the baseline ends at the start of the
/// window's first minute: ending at the window's start, the minute both
/// overlap was counted on both sides of the regression comparison.
fn detection_ranges(now: EpochMillis, window: i64, baseline: i64) -> (EpochMillis, (EpochMillis, EpochMillis)) {
    let from = now - window;
    let base_to = from.div_euclid(MINUTE_MS) * MINUTE_MS;
    (from, (base_to - baseline, base_to))
}

/// One detection pass: snapshots under the lock, detectors outside it.
pub fn detect_pass(shared: &Shared, now: EpochMillis) {
    let started = std::time::Instant::now();
    let cfg = &shared.config;
    let (window, baseline) = {
        let mut w = lock(&shared.windows);
        w.roll(now);
        let (from, base) = detection_ranges(now, ms(cfg.detect_window), ms(cfg.baseline));
        let window = w.snapshot_top(from, now + 1, cfg.detect_fingerprints);
        // The baseline only matters for fingerprints seen recently.
        let recent: rustc_hash::FxHashSet<_> = window.queries.iter().map(|q| q.fingerprint).collect();
        let baseline = w.snapshot_of(base.0, base.1, &recent);
        // The top fingerprints by time get their own /metrics series.
        let mut top = window.by_fingerprint();
        top.sort_by_key(|r| std::cmp::Reverse(r.stats.db_time()));
        let top: Vec<_> = top.iter().map(|r| r.fingerprint).collect();
        w.totals.rerank(&top);
        (window, baseline)
    };
    let baseline = (!baseline.queries.is_empty()).then_some(baseline);
    let found: Vec<Finding> = detect_live(&window, baseline.as_ref(), &cfg.detectors);
    let partitions = crate::load::partitions(&window);
    let nodes = crate::load::nodes(&window);
    let mut d = lock(&shared.detect);
    let open_before: BTreeSet<String> = d.tracker.findings().filter(|f| f.is_open()).map(|f| f.id.clone()).collect();
    d.tracker.update(found, now);
    if shared.config.log_findings {
        // One line per change, so the operator's log (and the demo) reads
        // as a story: what opened, what resolved.
        for f in d.tracker.findings() {
            let was_open = open_before.contains(&f.id);
            if f.is_open() && !was_open {
                eprintln!(
                    "querywatch collector: finding opened [{}] {}: {}",
                    f.severity.as_str(),
                    f.kind.as_str(),
                    f.summary
                );
            } else if !f.is_open() && was_open {
                eprintln!("querywatch collector: finding resolved {}: {}", f.kind.as_str(), f.summary);
            }
        }
    }
    d.partitions = partitions;
    d.nodes = nodes;
    d.at = now;
    shared.detect_passes.fetch_add(1, Ordering::Relaxed);
    shared.detect_micros.store(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Binds every listener and starts the tasks. Returns once all listeners
/// are bound (ports known), so callers and tests can use them at once.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let api = api_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let (tx, mut rx) = mpsc::channel::<Vec<Batch>>(config.queue);
    let ingest = Arc::new(IngestCounters::default());
    let shared = Arc::new(Shared {
        windows: Mutex::new(Windows::new(config.store.clone())),
        detect: Mutex::new(DetectState {
            tracker: FindingTracker::new(config.tracker.clone()),
            ..DetectState::default()
        }),
        ingest: ingest.clone(),
        queued: AtomicU64::new(0),
        queue_capacity: config.queue,
        ready: AtomicBool::new(false),
        started: now_ms(),
        detect_passes: AtomicU64::new(0),
        detect_micros: AtomicU64::new(0),
        forward: crate::forward::ForwardCounters::default(),
        config,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let cfg = &shared.config;
    let receiver_cfg = ReceiverConfig {
        grpc: cfg.grpc,
        http: cfg.otlp_http,
        token: cfg.token.clone(),
        tls: cfg.tls.clone(),
        max_request_bytes: cfg.max_request_bytes,
        limits: cfg.limits,
    };
    let receiver = receive::Receiver::bind(receiver_cfg, tx, ingest).await?;
    let (grpc, otlp_http) = (receiver.grpc_addr(), receiver.http_addr());
    tasks.spawn(receiver.serve(stopped(stop_rx.clone())));

    // Ingest: the only writer of the store, on a thread of its own — it
    // waits for the store's lock (held by detection and API snapshots), and
    // must not park one of the runtime's few threads that serve OTLP while
    // it does. It ends when every sender is gone (the receiver stopped),
    // after draining the queue.
    let s = shared.clone();
    tasks.spawn_blocking(move || {
        while let Some(batches) = rx.blocking_recv() {
            s.queued.store(u64::try_from(rx.len()).unwrap_or(0), Ordering::Relaxed);
            // One lock per request, however many agents' batches it holds.
            let mut w = lock(&s.windows);
            for batch in batches {
                w.ingest(&batch.resource, batch.obs, now_ms());
            }
        }
    });

    let s = shared.clone();
    let stop = stop_rx.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(s.config.detect_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let s = s.clone();
                    // Detection is CPU work: keep it off the I/O threads.
                    let _ = tokio::task::spawn_blocking(move || detect_pass(&s, now_ms())).await;
                }
                () = stopped(stop.clone()) => break,
            }
        }
    });

    if let Some(cfg) = shared.config.forward.clone() {
        tasks.spawn(crate::forward::run(shared.clone(), cfg, stopped(stop_rx.clone())));
    }

    let app = crate::api::router(shared.clone());
    let stop = stop_rx.clone();
    // The same connection limits and timeouts as the OTLP listeners
    // (receive/conn.rs): the API port is open (`/metrics` needs no token),
    // and silent connections to it would hold file descriptors the
    // ingest listeners share with it.
    let limits = shared.config.limits;
    tasks.spawn(async move {
        let incoming = receive::conn::accept(api_listener, limits);
        receive::conn::serve_http(incoming, app, limits.header_timeout, stopped(stop)).await;
    });
    shared.ready.store(true, Ordering::Relaxed);
    Ok(Running { grpc, otlp_http, api, shared, stop: stop_tx, tasks })
}

#[cfg(test)]
mod tests {
    use super::detection_ranges;

    #[test]
    fn the_baseline_ends_where_the_windows_first_minute_starts() {
        // 12:07:30 with a 5-minute window from 12:02:30: the minute bucket
        // 12:02 is the window's, so the hour's baseline is [11:02, 12:02).
        let min = 60_000;
        let now = 1_800_000_000_000 + 7 * min + 30_000;
        let (from, (b0, b1)) = detection_ranges(now, 5 * min, 60 * min);
        assert_eq!(from, now - 5 * min);
        assert_eq!(b1, 1_800_000_000_000 + 2 * min);
        assert_eq!(b1 - b0, 60 * min);
        assert!(b1 <= from && from - b1 < min);
        // On a minute boundary nothing is cut.
        let (from, (_, b1)) = detection_ranges(1_800_000_000_000, 5 * min, 60 * min);
        assert_eq!(b1, from);
    }
}
