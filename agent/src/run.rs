//! The live agent's loop: the log source (tail → parse → aggregate per
//! interval) and the statistics source (the [`Poller`]'s deltas, added to
//! the same interval) → OTLP → exporter, and the log checkpoint moved only
//! by the exporter's receipts (DESIGN.md, "Failure behaviour").
//!
//! Two halves:
//! - a blocking worker ([`tokio::task::spawn_blocking`]) owns the
//!   [`Tailer`], one [`Parser`] per file generation and the current
//!   interval's [`Aggregator`]. It polls every [`POLL_EVERY`] (at once
//!   again while a backlog remains) and obeys commands: *cut* (finish the
//!   aggregator and capture the tailer's watermark in the same step, so the
//!   batch holds exactly the bytes the watermark covers), *commit* (a
//!   receipt arrived: commit and checkpoint) and *stop*.
//! - the async side ticks every `interval`, encodes each cut with the node's
//!   [`ResourceInfo`], submits it, turns receipts into commits, and on
//!   SIGTERM/SIGINT cuts the last interval, flushes the exporter, commits
//!   what it settled and stops the worker, within [`RunOptions::grace`].
//! - with `[database]`, the [`Poller`] runs as a task of its own and sends
//!   its [`StatsMessage`]s on a bounded channel; the async side adds each to
//!   the current interval ([`Observations::db`]). Statistics have no
//!   checkpoint: the server's counters are the state, and the poller's
//!   deltas never go negative across resets and restarts. At shutdown the
//!   poller is stopped first and what it still sends joins the last batch.
//!
//! Either source may be configured alone; without `[logs]` there is no
//! worker and batches carry no watermark.
//!
//! Runtime problems are counted and said once on stderr; only a bad
//! configuration (the tailer's or exporter's) makes [`run`] fail.
//!
//! Delivery is at least once, never less: a restart resumes at the last
//! checkpoint, which lags the collector's acknowledgement by the few
//! milliseconds between a receipt and the checkpoint write; a SIGKILL in
//! that window sends that batch again.
//!
//! The agent's own health travels in every batch ([`Observations::agent`],
//! `querywatch.agent.*` metrics): the worker names the log files each
//! interval read from (bytes and lines, by file name, capped), and the
//! async side adds, as deltas since the previous cut, the exporter's
//! failures by class, retries and spool drops ([`ExportHealth`]) and the
//! statistics poller's reconnects, connection failures and failed polls
//! ([`PollerHealth`]), plus the spool's size and the last successful
//! export as gauges. A batch reports the health up to its own cut, so the
//! failures to send it arrive with a later one.
//!
//! Shortcuts taken on purpose:
//! - The statistics source does not run in `--once` mode: its first poll
//!   is a baseline, so one pass has no deltas to send.
//! - What the exporter does after the last cut (the final flush) is only
//!   in the summary printed at exit.
//! - One [`Aggregator`] for the whole run, cut every interval
//!   ([`Aggregator::cut`]): lines that pair across an interval boundary
//!   (extended-protocol `parse`/`bind` and their `execute`, `log_statement`
//!   and its `log_duration`) keep their pairing, and the masking cache stays
//!   warm. A restart still loses the pairing of lines cut by it.

use crate::aggregate::{Aggregator, AggregatorConfig, DEFAULT_MAX_SHAPES};
use crate::config::{Config, DatabaseConfig, LogsConfig, QueryText};
use crate::export::{Batch, ExportCounters, ExportError, ExportHealth, Exporter, Options, Outcome, Receipt};
use crate::logparse::{self, LogFormat, ParseStats, Parser};
use crate::stats::{Poller, PollerConfig, PollerHealth, StatsError, StatsMessage};
use crate::tail::{Chunk, FileId, Source, StartAt, TailConfig, TailError, TailStats, Tailer, Watermark};
use crate::withhold::Withholder;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use querywatch_wire::health::{AgentHealth, FileRead};
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use querywatch_wire::{DbStats, Observations};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How often the tailer looks for new bytes when there is no backlog.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Bound of the poller → loop channel. The loop drains it at once; a full
/// channel makes the poller merge delta batches into the next interval
/// (nothing lost) and drop activity aggregates (counted).
const STATS_QUEUE: usize = 64;

/// How [`run`] behaves beyond the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Read what is there, export it as one batch, flush and stop.
    pub once: bool,
    /// After SIGTERM/SIGINT (or in `once` mode, after the read), how long
    /// the last cut, the exporter's flush and the checkpoint may take in
    /// all before the agent stops anyway (uncommitted data is then read
    /// again on the next start: nothing is lost).
    pub grace: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        // The exporter's own flush timeout is 5 s, plus a spool write.
        RunOptions { once: false, grace: Duration::from_secs(15) }
    }
}

/// What a run did, printed at exit.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub batches: u64,
    pub receipts: u64,
    /// Batches acknowledged or spooled (the rest were dropped and counted).
    pub delivered: u64,
    /// Runtime errors (submit failures, checkpoint writes, unusable files).
    pub errors: u64,
    pub tail: TailStats,
    pub export: Option<ExportCounters>,
    /// The shutdown did not finish within [`RunOptions::grace`].
    pub timed_out: bool,
}

/// What stops the agent from starting: configuration only.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no source configured: set [logs] directory or files, or [database] dsn (or both)")]
    NoSource,
    #[error("database source: {0}")]
    Database(#[from] StatsError),
    #[error("log source: {0}")]
    Tail(#[from] TailError),
    #[error("export: {0}")]
    Export(#[from] ExportError),
    #[error("cannot set up {what}: {source}")]
    Setup { what: &'static str, source: std::io::Error },
}

/// The node's OTLP resource from the configuration.
pub fn resource_info(cfg: &Config) -> ResourceInfo {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| cfg.node.clone());
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    ResourceInfo {
        service_version: env!("CARGO_PKG_VERSION").to_owned(),
        // One agent process: the node alone would not tell a restarted agent
        // (whose delta series start over) from the one before.
        service_instance_id: format!("{}-{}-{started}", cfg.node, std::process::id()),
        host_name: host,
        server_address: String::new(),
        server_port: None,
        node: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        extra: cfg
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.clone())) }),
                ..KeyValue::default()
            })
            .collect(),
    }
}

/// Runs the agent on a runtime of its own until SIGTERM/SIGINT (or, with
/// [`RunOptions::once`], until what is there has been exported).
pub fn run_blocking(cfg: Config, opts: RunOptions) -> Result<RunSummary, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RunError::Setup { what: "the async runtime", source })?;
    rt.block_on(run(cfg, opts))
}

/// The agent loop; see the module documentation. Call within a tokio
/// runtime with I/O, time and signals enabled.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<RunSummary, RunError> {
    for line in cfg.describe_sources() {
        eprintln!("querywatch agent: {line}");
    }
    if cfg.logs.is_none() && cfg.database.is_none() {
        return Err(RunError::NoSource);
    }
    let database = match &cfg.database {
        Some(_) if opts.once => {
            eprintln!(
                "querywatch agent: note: --once: the database source does not run (its first poll is only a \
                 baseline)"
            );
            None
        }
        Some(db) => Some(Poller::new(poller_config(db))?),
        None => None,
    };
    let tailer = match &cfg.logs {
        Some(logs) => {
            let tailer = Tailer::new(tail_config(logs, &cfg))?;
            eprintln!("querywatch agent: checkpoint {}", tailer.checkpoint_path().display());
            Some((tailer, logs.clone()))
        }
        None => None,
    };
    let (exporter, mut receipts) =
        Exporter::new(&cfg.export, &cfg.state_dir, Options::default())?.spawn::<Option<Watermark>>(4);
    let health = HealthDeltas::new(exporter.health().clone(), database.as_ref().map(Poller::health));
    // Signal handlers before any work, so an early SIGTERM is a clean stop.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| RunError::Setup { what: "the SIGTERM handler", source })?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| RunError::Setup { what: "the SIGINT handler", source })?;

    let (cmd, worker) = match tailer {
        Some((tailer, logs)) => {
            let agg_cfg = AggregatorConfig {
                max_shapes: logs.max_shapes,
                max_text: logs.max_entry_bytes,
                ..AggregatorConfig::default()
            };
            let (cmd_tx, cmd_rx) = std_mpsc::channel();
            let worker = Worker::new(tailer, logs, agg_cfg);
            (Some(cmd_tx), Some(tokio::task::spawn_blocking(move || worker.run(cmd_rx))))
        }
        None => (None, None),
    };
    let (mut stats_rx, poller) = match database {
        Some(poller) => {
            let (tx, rx) = mpsc::channel(STATS_QUEUE);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(poller.run(tx, async move {
                let _ = stopped.await;
            }));
            (Some(rx), Some((stop, task)))
        }
        None => (None, None),
    };

    let mut lp = Loop {
        cmd,
        resource: resource_info(&cfg),
        last_cut: now_ns(),
        db: DbStats::default(),
        health,
        summary: RunSummary::default(),
        said: HashSet::new(),
        // Sized like the log's shape cap: one interval's shapes stay cached.
        withhold: (cfg.export.query_text == QueryText::Fingerprint)
            .then(|| Withholder::new(cfg.logs.as_ref().map_or(DEFAULT_MAX_SHAPES, |l| l.max_shapes))),
    };
    eprintln!(
        "querywatch agent: node {:?}, exporting every {:?} to {} ({:?}{})",
        cfg.node,
        cfg.interval,
        cfg.export.endpoint,
        cfg.export.protocol,
        if lp.withhold.is_some() { ", query text withheld: fingerprints only" } else { "" }
    );

    // The last submit was cut short by a signal: the exporter's queue is
    // full, so the last interval is not cut (it stays in the log).
    let mut blocked = false;
    if !opts.once {
        let start = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval_at(start + cfg.interval, cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(batch) = lp.cut(CutMode::Plain).await {
                        // The exporter's queue is full only while it holds a
                        // batch it can neither send nor spool (collector down
                        // and the spool's disk full): waiting for room must
                        // not make the agent deaf to SIGTERM. The batch not
                        // submitted was never committed, so its data is read
                        // again from the log on the next start.
                        let signal = tokio::select! {
                            r = exporter.submit(batch) => {
                                if r.is_err() {
                                    lp.error(
                                        "submit",
                                        "the exporter has stopped; data stays in the log for the next start".into(),
                                    );
                                }
                                None
                            }
                            _ = sigterm.recv() => Some("SIGTERM"),
                            _ = sigint.recv() => Some("SIGINT"),
                        };
                        if let Some(name) = signal {
                            eprintln!(
                                "querywatch agent: {name} while the exporter's queue is full (collector unreachable \
                                 and the spool not writable): stopping; what was not delivered is read again from \
                                 the log on the next start"
                            );
                            blocked = true;
                            break;
                        }
                    }
                }
                Some(r) = receipts.recv() => lp.settle(r),
                m = recv_stats(&mut stats_rx) => match m {
                    Some(m) => m.add_to(&mut lp.db),
                    None => {
                        stats_rx = None;
                        lp.error("poller", "the statistics poller has stopped".into());
                    }
                },
                _ = sigterm.recv() => { eprintln!("querywatch agent: SIGTERM: stopping"); break; }
                _ = sigint.recv() => { eprintln!("querywatch agent: SIGINT: stopping"); break; }
            }
        }
    }

    // The last interval (in `once` mode the only one), flush, commit, stop.
    let mode = if opts.once { CutMode::Drain } else { CutMode::PollFirst };
    let finish = async {
        // The poller first: what it still sends joins the last batch.
        if let Some((stop, task)) = poller {
            let _ = stop.send(());
            if task.await.is_err() {
                lp.error("poller", "the statistics poller failed".into());
            }
            while let Some(m) = stats_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
                m.add_to(&mut lp.db);
            }
        }
        if !blocked
            && let Some(batch) = lp.cut(mode).await
            && exporter.submit(batch).await.is_err()
        {
            lp.error("submit", "the exporter has stopped; data stays in the log for the next start".into());
        }
        let counters = exporter.shutdown().await;
        while let Ok(r) = receipts.try_recv() {
            lp.settle(r);
        }
        counters
    };
    match tokio::time::timeout(opts.grace, finish).await {
        Ok(counters) => lp.summary.export = Some(counters),
        Err(_) => {
            lp.summary.timed_out = true;
            eprintln!(
                "querywatch agent: shutdown took longer than {:?}; stopping anyway (unacknowledged data is read \
                 again on the next start)",
                opts.grace
            );
        }
    }
    // Stop: the worker writes its last checkpoint (of what was committed).
    if let (Some(cmd), Some(worker)) = (&lp.cmd, worker) {
        let _ = cmd.send(Cmd::Stop);
        match tokio::time::timeout(Duration::from_secs(5), worker).await {
            Ok(Ok(end)) => {
                lp.summary.errors += end.errors;
                lp.summary.tail = end.tail;
            }
            Ok(Err(e)) => lp.error("worker", format!("the log worker failed: {e}")),
            Err(_) => lp.error("worker", "the log worker did not stop within 5s".into()),
        }
    }
    let s = &lp.summary;
    eprintln!(
        "querywatch agent: stopped: {} batches, {} settled, {} runtime errors; read {} bytes from {} files",
        s.batches, s.receipts, s.errors, s.tail.bytes_read, s.tail.files_opened
    );
    Ok(lp.summary)
}

fn poller_config(db: &DatabaseConfig) -> PollerConfig {
    let mut pc = PollerConfig::new(db.dsn.clone());
    pc.statements_interval = db.statements_interval;
    pc.activity_interval = db.activity_interval;
    pc
}

/// The next poller message; never resolves without a poller.
async fn recv_stats(rx: &mut Option<mpsc::Receiver<StatsMessage>>) -> Option<StatsMessage> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn tail_config(logs: &LogsConfig, cfg: &Config) -> TailConfig {
    let mut sources = Vec::new();
    if let Some(dir) = &logs.directory {
        sources.push(Source::Directory { dir: dir.clone(), pattern: logs.pattern.as_str().to_owned() });
    }
    sources.extend(logs.files.iter().cloned().map(Source::File));
    let mut tc = TailConfig::new(sources, cfg.state_dir.clone());
    tc.start_at = if logs.start_at_end { StartAt::End } else { StartAt::Beginning };
    tc.max_entry_bytes = logs.max_entry_bytes;
    tc
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The async side's state.
struct Loop {
    /// The log worker's commands; `None` without a log source.
    cmd: Option<std_mpsc::Sender<Cmd>>,
    resource: ResourceInfo,
    last_cut: u64,
    /// The statistics poller's deltas of the current interval.
    db: DbStats,
    health: HealthDeltas,
    summary: RunSummary,
    /// Error kinds already said on stderr (each is counted always).
    said: HashSet<&'static str>,
    /// `Some` with `export.query_text = "fingerprint"`.
    withhold: Option<Withholder>,
}

impl Loop {
    fn error(&mut self, kind: &'static str, message: String) {
        self.summary.errors += 1;
        if self.said.insert(kind) {
            eprintln!("querywatch agent: error: {message} (said once; counted)");
        }
    }

    /// Cuts the interval (in the worker, when there is a log source), adds
    /// the statistics of the interval and encodes it as a batch.
    async fn cut(&mut self, mode: CutMode) -> Option<Batch<Option<Watermark>>> {
        let mut cut = match &self.cmd {
            Some(cmd) => {
                let (reply, rx) = oneshot::channel();
                if cmd.send(Cmd::Cut { mode, reply }).is_err() {
                    self.error("worker", "the log worker has stopped".into());
                    return None;
                }
                let Ok(cut) = rx.await else {
                    self.error("worker", "the log worker has stopped".into());
                    return None;
                };
                Cut { obs: cut.obs, watermark: Some(cut.watermark) }
            }
            None => Cut { obs: Observations::default(), watermark: None },
        };
        cut.obs.db = std::mem::take(&mut self.db);
        // The worker filled in the files it read; the rest is ours.
        let files = std::mem::take(&mut cut.obs.agent.files);
        cut.obs.agent = self.health.cut(files);
        if let Some(mut w) = self.withhold.take() {
            // Off the runtime's thread: a first interval of 20,000 new
            // shapes is up to a second or two of pg_query parsing.
            let mut obs = std::mem::take(&mut cut.obs);
            match tokio::task::spawn_blocking(move || {
                w.apply(&mut obs);
                (obs, w)
            })
            .await
            {
                Ok((obs, w)) => {
                    cut.obs = obs;
                    self.withhold = Some(w);
                }
                Err(e) => {
                    // Nothing with text may leave: this interval is lost
                    // (counted); the next one starts a fresh cache of the
                    // default size.
                    self.error("withhold", format!("withholding query text failed, interval dropped: {e}"));
                    self.withhold = Some(Withholder::new(DEFAULT_MAX_SHAPES));
                    return None;
                }
            }
        }
        let end = now_ns().max(self.last_cut + 1);
        let interval = (self.last_cut, end);
        self.last_cut = end;
        self.summary.batches += 1;
        Some(Batch {
            metrics: encode_metrics(&cut.obs, &self.resource, interval),
            logs: encode_logs(&cut.obs, &self.resource, interval),
            watermark: cut.watermark,
        })
    }

    /// Every receipt settles its watermark (acked, spooled, or dropped and
    /// counted by the exporter), so each one is committed.
    fn settle(&mut self, r: Receipt<Option<Watermark>>) {
        self.summary.receipts += 1;
        // A rejected batch is committed too: the exporter counted and said
        // it, and sending the same data again would be refused again.
        if matches!(r.outcome, Outcome::Acked | Outcome::Spooled) {
            self.summary.delivered += 1;
        }
        if let (Some(cmd), Some(wm)) = (&self.cmd, r.watermark)
            && cmd.send(Cmd::Commit(wm)).is_err()
        {
            self.error("worker", "the log worker has stopped".into());
        }
    }
}

/// The poller's counters that travel, at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct PollerTotals {
    reconnects: u64,
    connect_failures: u64,
    connections_lost: u64,
    poll_failures: u64,
}

impl PollerTotals {
    fn of(h: &PollerHealth) -> PollerTotals {
        let g = PollerHealth::get;
        PollerTotals {
            reconnects: g(&h.reconnects),
            connect_failures: g(&h.connect_failures),
            connections_lost: g(&h.connections_lost),
            poll_failures: g(&h.poll_failures).saturating_add(g(&h.activity_failures)),
        }
    }
}

/// Turns the exporter's and the poller's running totals into the
/// per-interval [`AgentHealth`] (counters as deltas since the previous cut,
/// gauges as they are now).
struct HealthDeltas {
    export: Arc<ExportHealth>,
    export_before: ExportCounters,
    poller: Option<Arc<PollerHealth>>,
    poller_before: PollerTotals,
}

impl HealthDeltas {
    fn new(export: Arc<ExportHealth>, poller: Option<Arc<PollerHealth>>) -> HealthDeltas {
        HealthDeltas {
            export,
            export_before: ExportCounters::default(),
            poller,
            poller_before: PollerTotals::default(),
        }
    }

    fn cut(&mut self, files: BTreeMap<String, FileRead>) -> AgentHealth {
        let now = self.export.snapshot();
        let before = std::mem::replace(&mut self.export_before, now.clone());
        let d = |f: fn(&ExportCounters) -> u64| f(&now).saturating_sub(f(&before));
        let mut h = AgentHealth {
            files,
            export_retryable_failures: d(|c| c.retryable_failures),
            export_throttled: d(|c| c.throttled),
            export_permanent_failures: d(|c| c.permanent_failures),
            export_retries: d(|c| c.retries),
            spool_dropped_batches: d(|c| c.spool_dropped_batches),
            spool_dropped_bytes: d(|c| c.spool_dropped_bytes),
            spool_batches: Some(now.spool_files),
            spool_bytes: Some(now.spool_bytes),
            last_export_unix_s: now.last_success.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            ..AgentHealth::default()
        };
        if let Some(p) = &self.poller {
            let now = PollerTotals::of(p);
            let before = std::mem::replace(&mut self.poller_before, now);
            h.poller_reconnects = now.reconnects.saturating_sub(before.reconnects);
            h.poller_connect_failures = now.connect_failures.saturating_sub(before.connect_failures);
            h.poller_connections_lost = now.connections_lost.saturating_sub(before.connections_lost);
            h.poller_poll_failures = now.poll_failures.saturating_sub(before.poll_failures);
        }
        h.cap_files();
        h
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutMode {
    /// Cut what has been consumed so far.
    Plain,
    /// Poll once more first (the last interval at shutdown).
    PollFirst,
    /// Read everything there is first (`--once`).
    Drain,
}

enum Cmd {
    Cut { mode: CutMode, reply: oneshot::Sender<Cut> },
    Commit(Watermark),
    Stop,
}

/// One interval's data and the watermark of exactly the bytes it holds.
struct Cut<W = Watermark> {
    obs: Observations,
    watermark: W,
}

/// What the worker reports when it stops.
struct WorkerEnd {
    errors: u64,
    tail: TailStats,
}

/// A file generation's parser and the part of its counters already
/// reported in an interval.
struct FileParser {
    parser: Parser,
    reported: ParseStats,
    /// The file's name (no directory) when its first chunk came: the
    /// attribute of its health numbers.
    name: String,
}

/// What generations finished during the interval read.
#[derive(Default)]
struct Finished {
    stats: ParseStats,
    files: BTreeMap<String, FileRead>,
}

impl Finished {
    fn add(&mut self, name: &str, stats: &ParseStats) {
        self.stats.merge(stats);
        add_read(&mut self.files, name, stats);
    }
}

fn add_read(files: &mut BTreeMap<String, FileRead>, name: &str, stats: &ParseStats) {
    if stats.bytes > 0 || stats.lines > 0 {
        files.entry(name.to_owned()).or_default().merge(&FileRead { bytes: stats.bytes, lines: stats.lines });
    }
}

struct Worker {
    tailer: Tailer,
    logs: LogsConfig,
    parsers: HashMap<FileId, FileParser>,
    agg: Aggregator,
    /// Parser counters of generations finished during this interval.
    finished: Finished,
    errors: u64,
    said: HashSet<String>,
    /// The tailer's unreadable-file errors already reported in a cut.
    unreadable_reported: u64,
}

impl Worker {
    fn new(tailer: Tailer, logs: LogsConfig, agg_cfg: AggregatorConfig) -> Worker {
        Worker {
            tailer,
            logs,
            parsers: HashMap::new(),
            agg: Aggregator::new(agg_cfg),
            finished: Finished::default(),
            errors: 0,
            said: HashSet::new(),
            unreadable_reported: 0,
        }
    }

    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) -> WorkerEnd {
        let mut next_poll = Instant::now();
        loop {
            match rx.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
                Ok(Cmd::Cut { mode, reply }) => {
                    match mode {
                        CutMode::Plain => {}
                        CutMode::PollFirst => {
                            self.poll();
                        }
                        CutMode::Drain => while self.poll() {},
                    }
                    let _ = reply.send(self.cut());
                }
                Ok(Cmd::Commit(wm)) => {
                    self.tailer.commit(&wm);
                    self.checkpoint();
                }
                Ok(Cmd::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    let more = self.poll();
                    next_poll = if more { Instant::now() } else { Instant::now() + POLL_EVERY };
                }
            }
        }
        self.checkpoint();
        WorkerEnd { errors: self.errors, tail: self.tailer.stats().clone() }
    }

    fn checkpoint(&mut self) {
        if let Err(e) = self.tailer.checkpoint() {
            self.errors += 1;
            if self.said.insert("checkpoint".into()) {
                eprintln!("querywatch agent: error: {e} (retried at the next commit; said once)");
            }
        }
    }

    /// One poll; whether there is more to read right away.
    fn poll(&mut self) -> bool {
        let Worker { tailer, logs, parsers, agg, finished, errors, said, .. } = self;
        let status = tailer.poll(&mut |chunk: Chunk<'_>| consume(chunk, logs, parsers, agg, finished, errors, said));
        for w in self.tailer.take_warnings() {
            eprintln!("querywatch agent: warning: {w}");
        }
        status.more
    }

    fn cut(&mut self) -> Cut {
        let Finished { mut stats, mut files } = std::mem::take(&mut self.finished);
        for fp in self.parsers.values_mut() {
            let new = fp.parser.stats().since(&fp.reported);
            stats.merge(&new);
            add_read(&mut files, &fp.name, &new);
            fp.reported = fp.parser.stats().clone();
        }
        // The tailer counts files it could not read (permission denied, a
        // directory or FIFO where a log file was, I/O errors), once per
        // episode; without this they were only said on stderr and never
        // reached the exported health (`querywatch.agent.unreadable_files`).
        let e = &self.tailer.stats().errors;
        let unreadable = e.permission_denied + e.not_a_file + e.io;
        stats.unreadable_files += unreadable.saturating_sub(self.unreadable_reported);
        self.unreadable_reported = unreadable;
        let mut obs = self.agg.cut(&stats);
        obs.agent.files = files;
        // No poll between finishing and this: the watermark covers exactly
        // the bytes whose entries are in `obs`.
        Cut { obs, watermark: self.tailer.watermark() }
    }
}

/// The tailer's consumer: parses a chunk with its file's parser (created on
/// the file's first complete line, with the format and prefix from the
/// configuration or detected from those bytes).
fn consume(
    chunk: Chunk<'_>,
    logs: &LogsConfig,
    parsers: &mut HashMap<FileId, FileParser>,
    agg: &mut Aggregator,
    finished: &mut Finished,
    errors: &mut u64,
    said: &mut HashSet<String>,
) -> usize {
    let fp = match parsers.entry(chunk.file) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => match new_parser(&chunk, logs, errors, said) {
            Ok(parser) => {
                let name = chunk.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                v.insert(FileParser { parser, reported: ParseStats::default(), name })
            }
            Err(consumed) => return consumed,
        },
    };
    let before = fp.parser.stats().clone();
    let mut truncated_at = None;
    let consumed = fp.parser.parse(chunk.data, chunk.eof, &mut |e| {
        if e.truncated && truncated_at.is_none() {
            truncated_at = Some(e.line);
        }
        agg.entry(&e)
    });
    let problems = Problems { before: &before, truncated_at, cap: logs.max_entry_bytes };
    problems.say(&chunk, consumed, &fp.parser, said);
    if chunk.eof
        && let Some(fp) = parsers.remove(&chunk.file)
    {
        let mut last = fp.parser.stats().since(&fp.reported);
        last.files += 1;
        finished.add(&fp.name, &last);
    }
    consumed
}

/// What one parse call found wrong, for [`Problems::say`].
struct Problems<'a> {
    /// The parser's counters before the call.
    before: &'a ParseStats,
    /// Line of the first entry emitted truncated.
    truncated_at: Option<u64>,
    cap: usize,
}

impl Problems<'_> {
    /// Says each kind of bad input (lines that are not log entries, entries
    /// over the size cap, bytes that are not UTF-8) on stderr the first
    /// time it is seen, naming the file and where in it; after that it is
    /// only counted (the parser's counters travel in the exported health as
    /// `querywatch.agent.parse_failures`, `.truncated`, `.invalid_utf8`).
    /// Once per run, not per line or per file: a misconfigured prefix makes
    /// every line of every file fail, and a line per file each rotation
    /// would still be noise.
    fn say(&self, chunk: &Chunk<'_>, consumed: usize, parser: &Parser, said: &mut HashSet<String>) {
        let now = parser.stats();
        let d = now.since(self.before);
        if d.unparsed + d.truncated + d.invalid_utf8 == 0 {
            return;
        }
        let path = chunk.path.display();
        let (from, to) = (chunk.offset, chunk.offset + consumed as u64);
        let lines = format!("lines {}..{}", self.before.lines + 1, now.lines.max(self.before.lines + 1));
        let once = "counted from now on, said once";
        if d.unparsed > 0 && said.insert("parse: unparsed".into()) {
            let hint = match parser {
                Parser::Stderr(p) => format!(
                    "; is the server's log_line_prefix {:?}? ([logs] prefix; SHOW log_line_prefix)",
                    p.prefix().as_str()
                ),
                _ => "; is [logs] format right, or was the file cut by a crash?".to_owned(),
            };
            eprintln!(
                "querywatch agent: warning: {path}: {n} line(s) not recognized as log entries between offset \
                 {from} and {to} ({lines}){hint}; {once} (querywatch.agent.parse_failures)",
                n = d.unparsed
            );
        }
        if d.truncated > 0 && said.insert("parse: truncated".into()) {
            let at = self.truncated_at.map_or_else(String::new, |l| format!(" at line {l}"));
            eprintln!(
                "querywatch agent: warning: {path}: an entry{at} longer than max_entry_bytes ({cap} bytes), between \
                 offset {from} and {to}: truncated to the cap; {once} (querywatch.agent.truncated)",
                cap = self.cap
            );
        }
        if d.invalid_utf8 > 0 && said.insert("parse: invalid_utf8".into()) {
            eprintln!(
                "querywatch agent: warning: {path}: {n} entr(y/ies) with bytes that are not valid UTF-8 between \
                 offset {from} and {to} ({lines}): replaced with U+FFFD; {once} (querywatch.agent.invalid_utf8)",
                n = d.invalid_utf8
            );
        }
    }
}

/// A parser for a file's first chunk (format and prefix configured, or
/// detected from those bytes); `Err(consumed)` when there is none yet.
fn new_parser(
    chunk: &Chunk<'_>,
    logs: &LogsConfig,
    errors: &mut u64,
    said: &mut HashSet<String>,
) -> Result<Parser, usize> {
    // Detection needs a complete line; the tailer keeps what we leave.
    if !chunk.eof && memchr::memchr(b'\n', chunk.data).is_none() {
        return Err(0);
    }
    if chunk.data.is_empty() {
        return Err(0);
    }
    let name = chunk.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let head = &chunk.data[..chunk.data.len().min(64 << 10)];
    let format = logs.format.unwrap_or_else(|| logparse::detect_format(&name, head));
    let mut alternatives = Vec::new();
    let prefix = match (&logs.prefix, format) {
        (Some(p), _) => Some(p.clone()),
        (None, LogFormat::Stderr) => {
            let detected = logparse::detect_prefix_with_alternatives(head).map(|(p, others)| {
                alternatives = others;
                p
            });
            let key = format!("prefix {}", chunk.path.display());
            match &detected {
                None if said.insert(key.clone()) => eprintln!(
                    "querywatch agent: warning: {}: log_line_prefix not recognized; set [logs] prefix \
                     (SHOW log_line_prefix)",
                    chunk.path.display()
                ),
                Some(p) if p.is_heuristic() && said.insert(key) => eprintln!(
                    "querywatch agent: note: {}: log_line_prefix not recognized; reading it without user and \
                     database names. Set [logs] prefix (SHOW log_line_prefix) for those",
                    chunk.path.display()
                ),
                _ => {}
            }
            detected
        }
        _ => None,
    };
    match Parser::new(format, prefix, logs.max_entry_bytes) {
        Ok(parser) => Ok(parser.with_alternatives(alternatives)),
        Err(e) => {
            // Only a built-in fallback prefix could fail here (a
            // configured one was validated): skip the file, counted.
            *errors += 1;
            if said.insert(format!("parser {}", chunk.path.display())) {
                eprintln!("querywatch agent: error: {}: {e}: file skipped", chunk.path.display());
            }
            Err(chunk.data.len())
        }
    }
}
