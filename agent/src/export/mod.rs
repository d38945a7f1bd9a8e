//! The exporter: ships each interval's OTLP batch to the collector and
//! tells the caller, batch by batch and in order, when that batch is safe —
//! acknowledged by the collector or written durably to the on-disk spool —
//! so the agent can move its log checkpoint exactly that far (DESIGN.md,
//! "Failure behaviour").
//!
//! Parts:
//! - `transport`: OTLP/gRPC (tonic) or OTLP/HTTP protobuf (reqwest),
//!   headers, gzip, rustls.
//! - [`classify`]: a failure is retryable, throttled or permanent, as in
//!   opentelemetry-rust.
//! - `backoff`: exponential backoff with full jitter, a time budget per
//!   batch ([`RetryPolicy`]).
//! - [`spool`]: the bounded on-disk queue, oldest dropped first and counted.
//! - `counters`: the health numbers the agent reports ([`ExportHealth`]).
//!
//! Use from the agent's loop:
//!
//! ```text
//! let (exporter, receipts) = Exporter::new(&config.export, &config.state_dir, Options::default())?.spawn(4);
//! exporter.submit(Batch { metrics, logs, watermark: offsets }).await;   // each interval
//! while let Ok(r) = receipts.try_recv() { checkpoint.commit(r.watermark) } // any Outcome settles it
//! exporter.shutdown().await;                                           // on SIGTERM, after the last batch
//! ```
//!
//! One task ([`Exporter::run`]) handles batches strictly in order:
//!
//! 1. Spool empty: send (metrics, then logs); retry retryable failures with
//!    backoff and throttled ones after the collector's delay, within
//!    [`RetryPolicy::max_elapsed`]. Acknowledged → [`Outcome::Acked`];
//!    refused for good → [`Outcome::Rejected`], counted and said once per
//!    status; out of time → step 2.
//! 2. Spool not empty (or step 1 gave up): append to the spool →
//!    [`Outcome::Spooled`]. New batches go behind older spooled ones so the
//!    collector sees them in order.
//! 3. Whenever input is idle and the spool is not empty, its oldest file is
//!    sent (one attempt, paced by the backoff or the collector's delay) and
//!    deleted once acknowledged.
//!
//! Every [`Receipt`] settles its watermark: the data is with the collector,
//! on disk, or dropped and counted (refused for good, or too large for the
//! spool). Only when the spool cannot be written (disk full, unwritable)
//! does a batch stay unsettled: the exporter then holds it, takes no new
//! input (the caller's channel fills, and the log file stays the buffer)
//! and keeps trying to send or spool it. At shutdown such a batch gets no
//! receipt, and neither does any batch after it.
//!
//! Delivery is at least once: a request that timed out after the collector
//! processed it is sent again. Part of a batch already acknowledged is not
//! (the spool stores only what is left).
//!
//! Shortcuts taken on purpose: one request in flight at a time (an agent
//! sends two small requests per interval); spool draining is one file per
//! attempt, no batching of several files into one request.

mod backoff;
pub mod classify;
mod counters;
pub mod spool;
mod transport;

pub use backoff::RetryPolicy;
pub use counters::{ExportCounters, ExportHealth};

use crate::config::ExportConfig;
use backoff::Backoff;
use classify::Failure;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use rustc_hash::FxHashSet;
use spool::{Head, Pushed, Spool};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use transport::Transport;

/// One interval's data and the caller's mark of where it came from.
#[derive(Clone, Debug)]
pub struct Batch<W> {
    pub metrics: ExportMetricsServiceRequest,
    pub logs: ExportLogsServiceRequest,
    /// Opaque to the exporter (e.g. the log offsets the data was read up
    /// to); handed back in the batch's [`Receipt`].
    pub watermark: W,
}

/// What became of one batch. Every outcome settles the watermark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The collector acknowledged all of it.
    Acked,
    /// Written to the spool and fsynced; sent when the collector is back.
    Spooled,
    /// The collector refused it for good (e.g. UNAUTHENTICATED, HTTP 400);
    /// dropped and counted in `permanent_failures`.
    Rejected { status: String, message: String },
    /// The collector was unreachable and the batch alone is larger than the
    /// spool bound; dropped and counted in `spool_dropped_batches`.
    TooLargeToSpool,
}

/// A batch's watermark and what became of the batch, in submission order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt<W> {
    pub watermark: W,
    pub outcome: Outcome,
}

/// Tuning that is not part of the user's configuration (yet).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub retry: RetryPolicy,
    /// After shutdown, how long to keep trying to send the remaining
    /// batches (one attempt each) before spooling them.
    pub flush_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { retry: RetryPolicy::default(), flush_timeout: Duration::from_secs(5) }
    }
}

/// What makes an exporter impossible to start: configuration only.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export.endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("export.headers: {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
    #[error("export.ca_file: not usable as CA certificates: {0}")]
    CaFile(String),
    #[error("export.tls_cert / export.tls_key: not a usable client certificate and key: {0}")]
    ClientCert(String),
    #[error("export.ca_file, export.tls_cert or export.tls_key: not usable for TLS: {0}")]
    Tls(String),
    #[error("spool directory {path}: {source} (is state_dir writable?)")]
    Spool { path: PathBuf, source: std::io::Error },
}

/// A running exporter's input and output, from [`Exporter::spawn`].
pub struct ExportHandle<W> {
    input: mpsc::Sender<Batch<W>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ExportCounters>,
    health: Arc<ExportHealth>,
}

impl<W: Send + 'static> ExportHandle<W> {
    /// Queues a batch; waits while the queue is full (the exporter is
    /// holding a batch it could neither send nor spool). Gives the batch
    /// back if the exporter has stopped.
    pub async fn submit(&self, batch: Batch<W>) -> Result<(), Batch<W>> {
        self.input.send(batch).await.map_err(|e| e.0)
    }

    pub fn health(&self) -> &Arc<ExportHealth> {
        &self.health
    }

    /// Flushes and stops: queued batches get one more attempt each, else
    /// go to the spool, within [`Options::flush_timeout`] (plus a spool
    /// write). Returns the final counters. Dropping the handle stops the
    /// exporter the same way, without waiting for it.
    pub async fn shutdown(self) -> ExportCounters {
        let _ = self.stop.send(());
        drop(self.input);
        match self.task.await {
            Ok(c) => c,
            Err(_) => self.health.snapshot(),
        }
    }
}

/// The exporter of one agent. See the module documentation.
pub struct Exporter {
    transport: Transport,
    spool: Spool,
    options: Options,
    health: Arc<ExportHealth>,
    /// Paces attempts to drain the spool.
    drain_backoff: Backoff,
    next_drain: Instant,
    /// Problems already reported on stderr (permanent failures by status,
    /// spool errors by kind): said once, counted always.
    said: FxHashSet<String>,
    /// The last failure that sent batches to the spool, for the one line
    /// that says so.
    unreachable: Option<String>,
}

/// An in-flight batch: the parts not yet acknowledged.
struct Pending {
    metrics: Option<ExportMetricsServiceRequest>,
    logs: Option<ExportLogsServiceRequest>,
}

impl Pending {
    fn new(metrics: ExportMetricsServiceRequest, logs: ExportLogsServiceRequest) -> Pending {
        Pending {
            metrics: (!metrics.resource_metrics.is_empty()).then_some(metrics),
            logs: (!logs.resource_logs.is_empty()).then_some(logs),
        }
    }

    fn parts(&self) -> usize {
        usize::from(self.metrics.is_some()) + usize::from(self.logs.is_some())
    }

    fn as_requests(&self) -> (ExportMetricsServiceRequest, ExportLogsServiceRequest) {
        (self.metrics.clone().unwrap_or_default(), self.logs.clone().unwrap_or_default())
    }
}

enum Delivery {
    Acked,
    Rejected { status: String, message: String },
    GaveUp(Failure),
}

/// The caller's stop signal, and the flush deadline it starts.
struct Shutdown<'a> {
    signal: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    deadline: Option<Instant>,
    grace: Duration,
}

impl Shutdown<'_> {
    fn fired(&self) -> bool {
        self.deadline.is_some()
    }

    /// Resolves when the signal fires; at once if it already has.
    async fn wait(&mut self) {
        if self.deadline.is_none() {
            (&mut self.signal).await;
            self.begin();
        }
    }

    fn begin(&mut self) {
        self.deadline.get_or_insert_with(|| Instant::now() + self.grace);
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl Exporter {
    /// Validates the configuration and opens the spool under
    /// `state_dir/spool/`, picking up what a previous run left there. No
    /// network yet: an unreachable collector is not an error.
    pub fn new(config: &ExportConfig, state_dir: &Path, options: Options) -> Result<Exporter, ExportError> {
        let transport = Transport::new(config)?;
        let health = Arc::new(ExportHealth::default());
        let dir = state_dir.join("spool");
        let spool = Spool::open(dir.clone(), config.spool_max_bytes, health.clone())
            .map_err(|source| ExportError::Spool { path: dir, source })?;
        Ok(Exporter {
            transport,
            spool,
            options,
            health,
            drain_backoff: Backoff::new(&options.retry),
            next_drain: Instant::now(),
            said: FxHashSet::default(),
            unreachable: None,
        })
    }

    /// The live counters, for the agent's health metrics.
    pub fn health(&self) -> Arc<ExportHealth> {
        self.health.clone()
    }

    /// Runs on a task of its own (call within the tokio runtime): submit
    /// with [`ExportHandle::submit`] (`queue` batches may wait), read
    /// receipts from the returned receiver (in submission order), stop
    /// with [`ExportHandle::shutdown`].
    pub fn spawn<W: Send + 'static>(self, queue: usize) -> (ExportHandle<W>, mpsc::UnboundedReceiver<Receipt<W>>) {
        let (input, rx) = mpsc::channel(queue.max(1));
        let (receipts, receipts_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let health = self.health();
        let task = tokio::spawn(self.run(rx, receipts, async move {
            let _ = stop_rx.await;
        }));
        (ExportHandle { input, stop, task, health }, receipts_rx)
    }

    /// Handles batches from `input` until `shutdown` resolves or every
    /// sender is gone; then flushes what is queued (one attempt each, else
    /// spool) within [`Options::flush_timeout`] and returns the counters.
    /// Receipts go to `receipts` in input order; the channel is unbounded
    /// so that a caller that submits and reads receipts from one loop
    /// cannot deadlock with the exporter.
    pub async fn run<W: Send>(
        mut self,
        mut input: mpsc::Receiver<Batch<W>>,
        receipts: mpsc::UnboundedSender<Receipt<W>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> ExportCounters {
        let mut shutdown = Shutdown { signal: Box::pin(shutdown), deadline: None, grace: self.options.flush_timeout };
        loop {
            if shutdown.fired() {
                // Nothing new gets in; what is queued is still received.
                input.close();
            }
            let draining = !self.spool.is_empty() && !shutdown.fired();
            let next = tokio::select! {
                biased;
                _ = shutdown.wait(), if !shutdown.fired() => continue,
                batch = input.recv() => batch,
                _ = sleep_until(self.next_drain), if draining => {
                    self.drain_one(&mut shutdown).await;
                    continue;
                }
            };
            let Some(batch) = next else { break };
            ExportHealth::add(&self.health.batches_submitted, 1);
            if input.is_closed() {
                // Every sender is gone: this is the flush.
                shutdown.begin();
            }
            let pending = Pending::new(batch.metrics, batch.logs);
            match self.settle(pending, &mut shutdown).await {
                Some(outcome) => {
                    let _ = receipts.send(Receipt { watermark: batch.watermark, outcome });
                }
                None => {
                    let left = 1 + input.len();
                    eprintln!(
                        "querywatch: warning: export: {left} batch(es) neither sent nor spooled at shutdown; \
                         their data will be read again from the logs"
                    );
                    break;
                }
            }
        }
        self.health.snapshot()
    }

    /// Sends or spools one batch; `None` only when neither worked by the
    /// end of the flush.
    async fn settle(&mut self, mut p: Pending, shutdown: &mut Shutdown<'_>) -> Option<Outcome> {
        if p.parts() == 0 {
            return Some(Outcome::Acked);
        }
        let mut hold = Backoff::new(&self.options.retry);
        loop {
            let mut failure = None;
            if self.spool.is_empty() {
                match self.deliver(&mut p, shutdown).await {
                    Delivery::Acked => {
                        ExportHealth::add(&self.health.batches_acked, 1);
                        return Some(Outcome::Acked);
                    }
                    Delivery::Rejected { status, message } => return Some(self.rejected(status, message)),
                    Delivery::GaveUp(f) => failure = Some(f),
                }
            }
            let (metrics, logs) = p.as_requests();
            match self.spool.push(&metrics, &logs).await {
                Ok(pushed) => {
                    if let Some(f) = failure {
                        self.went_unreachable(&f);
                    }
                    return Some(match pushed {
                        Pushed::Stored { .. } => Outcome::Spooled,
                        Pushed::TooLarge { bytes } => {
                            let max = self.spool.max_bytes();
                            self.say_once("spool-too-large".into(), || {
                                format!(
                                    "a batch of {bytes} bytes is larger than the whole spool (export.spool_max_bytes = \
                                     {max}); dropped and counted"
                                )
                            });
                            Outcome::TooLargeToSpool
                        }
                    });
                }
                Err(e) => {
                    ExportHealth::add(&self.health.spool_errors, 1);
                    let dir = self.spool.dir().display().to_string();
                    self.say_once(format!("spool-write-{:?}", e.kind()), || {
                        format!("cannot write to the spool in {dir}: {e}; holding the batch and retrying")
                    });
                    if shutdown.fired() {
                        return None;
                    }
                    let wait = hold.next_delay().max(self.options.retry.initial);
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = shutdown.wait() => {}
                    }
                    if !self.spool.is_empty() && !shutdown.fired() {
                        // Draining frees space, and an empty spool lets the
                        // batch be sent directly.
                        self.drain_one(shutdown).await;
                    }
                }
            }
        }
    }

    /// Sends a batch with retries, within the per-batch time budget (or
    /// once, bounded by the flush deadline, during shutdown).
    async fn deliver(&mut self, p: &mut Pending, shutdown: &mut Shutdown<'_>) -> Delivery {
        let give_up_at = Instant::now() + self.options.retry.max_elapsed;
        let mut backoff = Backoff::new(&self.options.retry);
        loop {
            if shutdown.past_deadline() {
                return Delivery::GaveUp(Failure::retryable("flush deadline passed"));
            }
            let failure = match self.attempt_bounded(p, shutdown).await {
                Ok(()) => return Delivery::Acked,
                Err(Failure::Permanent { status, message }) => return Delivery::Rejected { status, message },
                Err(f) => f,
            };
            let wait = match &failure {
                Failure::Throttled { delay, .. } => {
                    ExportHealth::add(&self.health.throttled, 1);
                    backoff.throttled(*delay)
                }
                _ => {
                    ExportHealth::add(&self.health.retryable_failures, 1);
                    backoff.next_delay()
                }
            };
            if shutdown.fired() || Instant::now() + wait > give_up_at {
                self.schedule_drain(&failure);
                return Delivery::GaveUp(failure);
            }
            ExportHealth::add(&self.health.retries, 1);
            tokio::select! {
                _ = sleep(wait) => {}
                // Shutdown cuts the wait short: one more attempt, then the spool.
                _ = shutdown.wait() => {}
            }
        }
    }

    /// One attempt; if shutdown comes while it is in flight, it may finish
    /// until the flush deadline.
    async fn attempt_bounded(&mut self, p: &mut Pending, shutdown: &mut Shutdown<'_>) -> Result<(), Failure> {
        let cut = || Err(Failure::retryable("flush deadline passed"));
        if let Some(deadline) = shutdown.deadline {
            return timeout_at(deadline, self.attempt(p)).await.unwrap_or_else(|_| cut());
        }
        let grace = shutdown.grace;
        let attempt = self.attempt(p);
        tokio::pin!(attempt);
        tokio::select! {
            r = &mut attempt => r,
            _ = shutdown.wait() => {
                let deadline = shutdown.deadline.unwrap_or_else(|| Instant::now() + grace);
                timeout_at(deadline, attempt).await.unwrap_or_else(|_| cut())
            }
        }
    }

    /// Sends what is left of a batch: metrics, then logs. A part is marked
    /// done as soon as it is acknowledged, so a retry sends only the rest.
    async fn attempt(&mut self, p: &mut Pending) -> Result<(), Failure> {
        if let Some(metrics) = &p.metrics {
            ExportHealth::add(&self.health.requests, 1);
            let accepted = self.transport.send_metrics(metrics).await?;
            self.accepted(accepted, "data points", |h| &h.rejected_data_points);
            p.metrics = None;
        }
        if let Some(logs) = &p.logs {
            ExportHealth::add(&self.health.requests, 1);
            let accepted = self.transport.send_logs(logs).await?;
            self.accepted(accepted, "log records", |h| &h.rejected_log_records);
            p.logs = None;
        }
        Ok(())
    }

    fn accepted(
        &mut self,
        a: transport::Accepted,
        what: &str,
        counter: impl Fn(&ExportHealth) -> &std::sync::atomic::AtomicU64,
    ) {
        self.health.success_now();
        if a.rejected > 0 {
            ExportHealth::add(counter(&self.health), a.rejected);
            let (n, message) = (a.rejected, a.message);
            self.say_once(format!("partial-{what}"), || {
                format!("the collector rejected {n} {what} of a batch (counted from now on): {message}")
            });
        }
    }

    fn rejected(&mut self, status: String, message: String) -> Outcome {
        ExportHealth::add(&self.health.permanent_failures, 1);
        self.say_once(format!("permanent-{status}"), || {
            format!("the collector refused a batch for good ({status}: {message}); dropped, not retried, counted")
        });
        Outcome::Rejected { status, message }
    }

    /// Sends the oldest spooled batch once, and deletes it when it is
    /// acknowledged (or refused for good, or unreadable).
    async fn drain_one(&mut self, shutdown: &mut Shutdown<'_>) {
        let Some(head) = self.spool.head().await else { return };
        let (seq, metrics, logs) = match head {
            Head::Batch { seq, metrics, logs } => (seq, metrics, logs),
            Head::Corrupt { seq, why } => {
                let dir = self.spool.dir().display().to_string();
                self.say_once("spool-corrupt".into(), || {
                    format!("unreadable spool file(s) in {dir} ({why}); moved to corrupt/ and counted")
                });
                self.spool.set_aside(seq).await;
                return;
            }
            Head::Missing { seq } => {
                self.spool.forget_missing(seq);
                return;
            }
        };
        let mut p = Pending::new(metrics, logs);
        let parts = p.parts();
        let result = if parts == 0 { Ok(()) } else { self.attempt_bounded(&mut p, shutdown).await };
        match result {
            Ok(()) => {
                self.spool.remove(seq).await;
                ExportHealth::add(&self.health.batches_acked, 1);
                self.drain_backoff.reset();
                self.next_drain = Instant::now();
                if self.spool.is_empty()
                    && let Some(reason) = self.unreachable.take()
                {
                    eprintln!("querywatch: export: collector reachable again, spool drained (it was: {reason})");
                }
            }
            Err(Failure::Permanent { status, message }) => {
                self.spool.remove(seq).await;
                self.rejected(status, message);
                self.next_drain = Instant::now();
            }
            Err(failure) => {
                if p.parts() < parts {
                    let (m, l) = p.as_requests();
                    if self.spool.replace(seq, &m, &l).await.is_err() {
                        // The acknowledged part will be sent again: a
                        // duplicate, never a loss.
                        ExportHealth::add(&self.health.spool_errors, 1);
                    }
                }
                if matches!(failure, Failure::Throttled { .. }) {
                    ExportHealth::add(&self.health.throttled, 1);
                } else {
                    ExportHealth::add(&self.health.retryable_failures, 1);
                }
                ExportHealth::add(&self.health.retries, 1);
                self.schedule_drain(&failure);
            }
        }
    }

    fn schedule_drain(&mut self, failure: &Failure) {
        let wait = match failure {
            Failure::Throttled { delay, .. } => self.drain_backoff.throttled(*delay),
            _ => self.drain_backoff.next_delay(),
        };
        self.next_drain = Instant::now() + wait;
    }

    fn went_unreachable(&mut self, failure: &Failure) {
        if self.unreachable.is_none() {
            eprintln!(
                "querywatch: warning: export: collector unreachable ({failure}); spooling to {}",
                self.spool.dir().display()
            );
            self.unreachable = Some(failure.to_string());
        }
    }

    fn say_once(&mut self, key: String, message: impl FnOnce() -> String) {
        if self.said.insert(key) {
            eprintln!("querywatch: warning: export: {}", message());
        }
    }
}
