//! The live poller: connections, the two clocks (statistics every
//! `statements_interval`, activity every `activity_interval`), reconnection
//! with backoff, and the bounded output channel.
//!
//! One task runs two sides concurrently ([`Poller::run`]), each owning its
//! state, so nothing needs a lock but the shared once-only messages:
//! - statistics: the primary connection (the database of the connection
//!   string) reads pg_stat_statements, which is cluster-wide, and that
//!   database's tables; every other configured database gets a connection
//!   of its own for its tables (statistics views are per database);
//! - activity: a connection of its own for pg_stat_activity (cluster-wide),
//!   so a statistics poll that waits never delays a sample.
//!
//! Connections: 2 + one per extra database.

use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use super::activity::{ActivityAccumulator, ActivityAggregate, ActivitySample};
use super::backoff::Backoff;
use super::counters::{Counters, ServerEpoch, count, millis};
use super::sql::{self, ExtVersion, MIN_SERVER_VERSION, Pgss, StatementSql};
use super::statements::{DiffReport, Snapshot, StatementBatch, StatementCounters, StatementEntry, StatementKey, diff};
use super::tables::{RelName, TableBatch, TableCounters, TableDiffReport, TableEntry, TableSnapshot, diff_tables};
use super::{StatsError, StatsMessage};
use crate::mask::mask;

/// Which databases' table statistics to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Databases {
    /// Only the database of the connection string (the default).
    FromDsn,
    /// Every database the role may connect to (re-listed every interval).
    All,
    /// These databases.
    Listed(Vec<String>),
}

/// The poller's settings, validated by [`Poller::new`].
#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// libpq-style key/value connection string (`host=… port=… user=…
    /// dbname=…`) or a `postgresql://` URL, of a role with `pg_monitor`.
    pub dsn: String,
    pub databases: Databases,
    /// pg_stat_statements and table statistics (default 10 s); also the
    /// activity aggregation interval.
    pub statements_interval: Duration,
    /// pg_stat_activity samples (default 1 s).
    pub activity_interval: Duration,
    /// `statement_timeout` of the agent's sessions (default 5 s); the
    /// client gives up a second later and reconnects.
    pub query_timeout: Duration,
    /// `lock_timeout` of the agent's sessions (default 1 s): only
    /// `pg_relation_size` takes a lock, and it must not queue behind DDL.
    pub lock_timeout: Duration,
    /// Unless the connection string sets `connect_timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// First reconnection delay (default 1 s), doubled per failure…
    pub backoff_initial: Duration,
    /// …up to this (default 60 s); half of it is random jitter.
    pub backoff_max: Duration,
}

impl PollerConfig {
    /// Defaults for everything but the connection string.
    pub fn new(dsn: impl Into<String>) -> Self {
        PollerConfig {
            dsn: dsn.into(),
            databases: Databases::FromDsn,
            statements_interval: Duration::from_secs(10),
            activity_interval: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The poller's own health, shared with whoever exports it. Monotonic
/// counters (read them with [`PollerHealth::get`]).
#[derive(Debug, Default)]
pub struct PollerHealth {
    /// Statistics polls that produced a snapshot (per database for tables).
    pub polls: AtomicU64,
    /// Polls that failed (query errors, timeouts; not connection attempts).
    pub poll_failures: AtomicU64,
    pub connects: AtomicU64,
    /// Connections established again, by a connection (one per database,
    /// one for activity sampling) that had one before.
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Established connections that broke.
    pub connections_lost: AtomicU64,
    /// Server restarts (incl. crash restarts) seen: new baselines.
    pub restarts: AtomicU64,
    /// `pg_stat_statements_reset()` / `pg_stat_reset()` of everything.
    pub resets: AtomicU64,
    /// Single entries whose counters went down.
    pub entries_reset: AtomicU64,
    /// pg_stat_statements evictions (`dealloc` growth).
    pub evicted: AtomicU64,
    /// Entries (statements, relations) that disappeared between polls.
    pub disappeared: AtomicU64,
    /// Entries that could not be proven new: baselines instead of deltas.
    pub unknown_entries: AtomicU64,
    /// pg_stat_statements rows without a queryid (no `pg_read_all_stats`).
    pub unattributed_rows: AtomicU64,
    /// Statements whose text vanished before it could be read (retried).
    pub texts_missing: AtomicU64,
    /// Reads with a reset in the middle, discarded (the next one counts).
    pub torn_reads: AtomicU64,
    /// Relation sizes not read this interval (lock timeout, …).
    pub size_failures: AtomicU64,
    pub activity_samples: AtomicU64,
    pub activity_failures: AtomicU64,
    /// Backends not counted: too many distinct keys in one interval.
    pub activity_overflow: AtomicU64,
    /// Delta batches that did not fit in the channel: kept and merged into
    /// the next interval's batch, so nothing is lost.
    pub batches_deferred: AtomicU64,
    /// Activity aggregates that did not fit in the channel: dropped.
    pub activity_dropped: AtomicU64,
    /// …and the backend samples they held.
    pub activity_samples_dropped: AtomicU64,
}

impl PollerHealth {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Messages said once (privileges, missing extension), kept for whoever
/// reports them (`querywatch check`, tests). Shared by both sides.
#[derive(Debug, Default)]
struct Notices {
    inner: Mutex<NoticesInner>,
}

#[derive(Debug, Default)]
struct NoticesInner {
    said: FxHashSet<String>,
    log: Vec<String>,
}

impl Notices {
    fn lock(&self) -> MutexGuard<'_, NoticesInner> {
        // A panic elsewhere while holding it leaves a usable set of strings.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says `message` on stderr, unless `key` was said before.
    fn once(&self, key: impl Into<String>, message: impl FnOnce() -> String) {
        let mut inner = self.lock();
        if inner.said.insert(key.into()) {
            let m = message();
            eprintln!("querywatch: warning: {m}");
            inner.log.push(m);
        }
    }

    /// Says it every time (connection state changes).
    fn say(&self, message: String) {
        eprintln!("querywatch: {message}");
    }

    fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

/// An open connection and what it told about the server.
struct Session {
    client: Client,
    server_version: i32,
    datname: Arc<str>,
    role: String,
    timeout: Duration,
}

/// A failed step of a poll.
enum Failure {
    /// The connection is gone (or stuck): reconnect.
    Lost(StatsError),
    /// The server answered with an error: the connection is fine.
    Query(StatsError),
}

impl Failure {
    fn from_pg(what: &'static str, e: tokio_postgres::Error, client: &Client) -> Failure {
        // Class 08 (connection exception), 57P (shutdown, crash): the
        // connection ends with them even if the socket is not closed yet.
        let fatal = e.is_closed()
            || client.is_closed()
            || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
        let err = StatsError::Postgres { what, source: e };
        if fatal { Failure::Lost(err) } else { Failure::Query(err) }
    }

    fn error(&self) -> &StatsError {
        match self {
            Failure::Lost(e) | Failure::Query(e) => e,
        }
    }
}

impl Session {
    async fn query(&self, what: &'static str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Failure> {
        match tokio::time::timeout(self.timeout, self.client.query(sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(Failure::from_pg(what, e, &self.client)),
            // The server did not answer within statement_timeout + 1 s: the
            // connection is not trustworthy any more.
            Err(_) => Err(Failure::Lost(StatsError::Timeout { what, timeout: self.timeout })),
        }
    }

    async fn query_one(&self, what: &'static str, sql: &str) -> Result<Row, Failure> {
        self.query(what, sql, &[]).await?.into_iter().next().ok_or(Failure::Query(StatsError::NoRow { what }))
    }
}

/// Reads column `i` of `row` without panicking on a surprise.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, what: &'static str, i: usize) -> Result<T, Failure> {
    row.try_get(i).map_err(|source| Failure::Query(StatsError::Postgres { what, source }))
}

/// One database connection with its reconnection state.
struct DbConn {
    /// For messages: the database name, or "(connection string)".
    label: String,
    config: tokio_postgres::Config,
    session: Option<Session>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    /// An outage was reported and recovery not yet.
    down_reported: bool,
    /// A session was established before: the next one is a reconnect.
    connected_before: bool,
    tables_prev: Option<TableSnapshot>,
}

impl DbConn {
    fn new(label: String, config: tokio_postgres::Config, pc: &PollerConfig) -> Self {
        DbConn {
            label,
            config,
            session: None,
            backoff: Backoff::new(pc.backoff_initial, pc.backoff_max),
            retry_at: None,
            down_reported: false,
            connected_before: false,
            tables_prev: None,
        }
    }

    /// The open session, connecting first if it is time to try.
    async fn ensure(&mut self, health: &PollerHealth, notices: &Notices, timeout: Duration) -> Option<&Session> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.lost(health, notices, "the connection closed".to_owned());
        }
        if self.session.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match self.connect(notices, timeout).await {
                Ok(session) => {
                    PollerHealth::add(&health.connects, 1);
                    if self.connected_before {
                        PollerHealth::add(&health.reconnects, 1);
                    }
                    self.connected_before = true;
                    if self.down_reported {
                        let failures = self.backoff.failures();
                        let after =
                            if failures > 0 { format!(" after {failures} failed attempt(s)") } else { String::new() };
                        notices.say(format!("reconnected to {}{after}", self.label));
                    }
                    self.down_reported = false;
                    self.backoff.reset();
                    self.retry_at = None;
                    self.session = Some(session);
                }
                Err(e) => {
                    PollerHealth::add(&health.connect_failures, 1);
                    let delay = self.backoff.fail();
                    self.retry_at = Some(Instant::now() + delay);
                    if !self.down_reported {
                        notices.say(format!("cannot connect to {}: {e}; retrying with backoff", self.label));
                        self.down_reported = true;
                    }
                    return None;
                }
            }
        }
        self.session.as_ref()
    }

    async fn connect(&self, notices: &Notices, timeout: Duration) -> Result<Session, StatsError> {
        // The config carries connect_timeout; this bounds the rest (TLS-less
        // startup, authentication) as well.
        let limit = self.config.get_connect_timeout().copied().unwrap_or(timeout) + timeout;
        let (client, connection) = tokio::time::timeout(limit, self.config.connect(NoTls))
            .await
            .map_err(|_| StatsError::Timeout { what: "connecting", timeout: limit })?
            .map_err(StatsError::Connect)?;
        // The connection future does the I/O; it ends when the client is
        // dropped or the server goes away (client.is_closed() tells).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut session = Session { client, server_version: 0, datname: Arc::from(""), role: String::new(), timeout };
        let row = session.query_one("reading the server version", sql::SERVER_INFO).await.map_err(into_error)?;
        session.server_version = col(&row, "server version", 0).map_err(into_error)?;
        session.datname = Arc::from(col::<String>(&row, "server version", 1).map_err(into_error)?);
        session.role = col(&row, "server version", 2).map_err(into_error)?;
        let can_read_all_stats: bool = col(&row, "server version", 3).map_err(into_error)?;
        if session.server_version < MIN_SERVER_VERSION {
            return Err(StatsError::Unsupported(session.server_version));
        }
        if !can_read_all_stats {
            let role = session.role.clone();
            notices.once(format!("privileges:{role}"), || {
                format!(
                    "role {role} lacks pg_monitor: statements and sessions of other roles are invisible \
                     (their pg_stat_statements rows have no queryid and are skipped). \
                     Fix, as a superuser: GRANT pg_monitor TO {role};"
                )
            });
        }
        Ok(session)
    }

    /// Drops a broken session; the next tick reconnects at once, later
    /// failures back off.
    fn lost(&mut self, health: &PollerHealth, notices: &Notices, why: String) {
        if self.session.take().is_some() {
            PollerHealth::add(&health.connections_lost, 1);
            notices.say(format!("lost the connection to {} ({why}); reconnecting", self.label));
            self.down_reported = true;
            self.retry_at = None;
        }
    }
}

fn into_error(f: Failure) -> StatsError {
    match f {
        Failure::Lost(e) | Failure::Query(e) => e,
    }
}

/// pg_stat_statements state that lives across polls.
#[derive(Default)]
struct StatementsState {
    prev: Option<Snapshot>,
    sql: Option<StatementSql>,
    /// Masked text per entry; `None` for the agent's own statements.
    texts: FxHashMap<StatementKey, Option<Arc<str>>>,
}

/// The statistics poller of the live agent; see the module docs of
/// [`crate::stats`].
///
/// Two sides with their own connections, run concurrently by [`Poller::run`]
/// in one task: statistics (pg_stat_statements on the primary connection,
/// tables on one connection per database) and activity samples. Separate
/// connections because a statistics poll may legitimately wait (a relation
/// size behind DDL, up to `lock_timeout`), and that is exactly when the
/// wait-event samples matter.
pub struct Poller {
    stats: StatsSide,
    activity: ActivitySide,
    health: Arc<PollerHealth>,
    notices: Arc<Notices>,
}

impl Poller {
    /// Validates the configuration (the only errors that stop anything).
    /// Connects to nothing yet.
    pub fn new(config: PollerConfig) -> Result<Poller, StatsError> {
        if config.statements_interval.is_zero() || config.activity_interval.is_zero() {
            return Err(StatsError::Config("statements_interval and activity_interval must be positive".into()));
        }
        let mut base: tokio_postgres::Config = config.dsn.parse().map_err(StatsError::Dsn)?;
        if base.get_application_name().is_none() {
            base.application_name("querywatch");
        }
        if base.get_connect_timeout().is_none() {
            base.connect_timeout(config.connect_timeout);
        }
        // Startup options rather than SET: no extra statement per session,
        // and they hold from the first query on.
        let ours = format!(
            "-c statement_timeout={} -c lock_timeout={}",
            config.query_timeout.as_millis().max(1),
            config.lock_timeout.as_millis().max(1)
        );
        let options = match base.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {ours}"),
            _ => ours,
        };
        base.options(options);
        let label = base.get_dbname().map_or_else(|| "(connection string)".to_owned(), |d| format!("database {d}"));
        let health = Arc::new(PollerHealth::default());
        let notices = Arc::new(Notices::default());
        // Client-side bound of a query: the server's statement_timeout plus
        // a second for the answer to arrive.
        let timeout = config.query_timeout + Duration::from_secs(1);
        let activity = ActivitySide {
            conn: DbConn::new(format!("{label} (activity sampling)"), base.clone(), &config),
            acc: ActivityAccumulator::new(SystemTime::now()),
            timeout,
            health: health.clone(),
            notices: notices.clone(),
        };
        let stats = StatsSide {
            primary: DbConn::new(label, base.clone(), &config),
            base,
            others: FxHashMap::default(),
            statements: StatementsState::default(),
            pending_statements: None,
            pending_tables: FxHashMap::default(),
            timeout,
            health: health.clone(),
            notices: notices.clone(),
            config,
        };
        Ok(Poller { stats, activity, health, notices })
    }

    /// The health counters, live.
    pub fn health(&self) -> Arc<PollerHealth> {
        self.health.clone()
    }

    /// Every once-only message said so far (privileges, extension, …).
    pub fn notices(&self) -> Vec<String> {
        self.notices.log()
    }

    /// Runs until `shutdown` completes or the receiver is dropped: the first
    /// statistics poll at once (a baseline), then every
    /// `statements_interval`; activity samples every `activity_interval`,
    /// their aggregate sent every `statements_interval`. Never returns on a
    /// database error. On shutdown, what was collected and fits is sent.
    pub async fn run(self, tx: mpsc::Sender<StatsMessage>, shutdown: impl Future<Output = ()>) {
        let Poller { mut stats, mut activity, .. } = self;
        let every = stats.config.statements_interval;
        let sample_every = stats.config.activity_interval;
        tokio::pin!(shutdown);
        let closed = {
            let stats_loop = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if !stats.tick(&tx).await {
                        return;
                    }
                }
            };
            let activity_loop = async {
                let mut sample = tokio::time::interval(sample_every);
                sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut close = tokio::time::interval_at(Instant::now() + every, every);
                close.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        _ = close.tick() => {
                            let aggregate = activity.take();
                            if activity.send(&tx, aggregate).is_err() {
                                return;
                            }
                        }
                        _ = sample.tick() => activity.sample().await,
                    }
                }
            };
            // Either loop ends only when the receiver is gone. Dropping them
            // mid-poll is safe: state changes only after a complete read.
            tokio::select! {
                () = &mut shutdown => false,
                () = stats_loop => true,
                () = activity_loop => true,
            }
        };
        if closed {
            return;
        }
        let mut out = stats.pending_messages();
        out.push(StatsMessage::Activity(activity.take()));
        for m in out {
            let sent = match m {
                StatsMessage::Activity(a) => activity.send(&tx, a),
                m => stats.send(&tx, m),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// Polls pg_stat_statements and the table statistics of every
    /// configured database once; returns the deltas against the previous
    /// poll (none for a baseline). Connection problems are handled here
    /// (counted, backed off); nothing is returned for what failed.
    pub async fn poll_stats(&mut self) -> Vec<StatsMessage> {
        self.stats.poll().await
    }

    /// Samples pg_stat_activity once into the current interval.
    pub async fn sample_activity(&mut self) {
        self.activity.sample().await;
    }

    /// Closes the current activity interval.
    pub fn take_activity(&mut self) -> ActivityAggregate {
        self.activity.take()
    }
}

/// Counts a failed step; a lost connection is dropped for reconnection;
/// known configuration problems are explained once.
fn failed(conn: Option<&mut DbConn>, f: Failure, health: &PollerHealth, notices: &Notices) {
    PollerHealth::add(&health.poll_failures, 1);
    if let Failure::Lost(e) = f {
        // Said by `lost`, with the reason.
        if let Some(conn) = conn {
            conn.lost(health, notices, e.to_string());
        }
        return;
    }
    let label = conn.as_ref().map_or_else(String::new, |c| c.label.clone());
    if let StatsError::Postgres { source, what } = f.error() {
        let code = source.code();
        if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            let role = conn.as_ref().and_then(|c| c.session.as_ref()).map_or("<role>", |s| s.role.as_str());
            notices.once(format!("denied:{what}:{role}"), || {
                format!(
                    "{what} in {label}: permission denied for role {role}. \
                     Fix, as a superuser: GRANT pg_monitor TO {role};"
                )
            });
        } else if code == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) {
            notices.once("preload", || {
                format!(
                    "{what}: {source}. Fix: add pg_stat_statements to shared_preload_libraries \
                     in postgresql.conf and restart PostgreSQL"
                )
            });
        } else {
            notices.say(format!("warning: {what} in {label}: {source}"));
        }
    } else {
        notices.say(format!("warning: {label}: {}", f.error()));
    }
}

/// The statistics side: pg_stat_statements and table statistics.
struct StatsSide {
    config: PollerConfig,
    base: tokio_postgres::Config,
    primary: DbConn,
    /// Table statistics of databases other than the primary's.
    others: FxHashMap<String, DbConn>,
    statements: StatementsState,
    pending_statements: Option<StatementBatch>,
    pending_tables: FxHashMap<Arc<str>, TableBatch>,
    timeout: Duration,
    health: Arc<PollerHealth>,
    notices: Arc<Notices>,
}

impl StatsSide {
    /// One tick of `run`; false when the receiver is gone.
    async fn tick(&mut self, tx: &mpsc::Sender<StatsMessage>) -> bool {
        let mut out = self.pending_messages();
        let fresh = self.poll().await;
        merge_into(&mut out, fresh);
        out.into_iter().all(|m| self.send(tx, m).is_ok())
    }

    /// Batches that did not fit before, to go out first (merged with the
    /// new ones of the same kind by [`merge_into`]).
    fn pending_messages(&mut self) -> Vec<StatsMessage> {
        let mut out: Vec<StatsMessage> =
            self.pending_statements.take().map(StatsMessage::Statements).into_iter().collect();
        out.extend(self.pending_tables.drain().map(|(_, b)| StatsMessage::Tables(b)));
        out
    }

    /// `try_send`: a full channel keeps delta batches for the next interval
    /// (merged, nothing lost); `Err` when the receiver is gone.
    fn send(&mut self, tx: &mpsc::Sender<StatsMessage>, m: StatsMessage) -> Result<(), ()> {
        match tx.try_send(m) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            Err(mpsc::error::TrySendError::Full(m)) => {
                PollerHealth::add(&self.health.batches_deferred, 1);
                match m {
                    StatsMessage::Statements(b) => self.pending_statements = Some(b),
                    StatsMessage::Tables(b) => {
                        self.pending_tables.insert(b.datname.clone(), b);
                    }
                    // Not sent by this side.
                    StatsMessage::Activity(_) => {}
                }
                Ok(())
            }
        }
    }

    async fn poll(&mut self) -> Vec<StatsMessage> {
        let mut out = Vec::new();
        let primary_db =
            self.primary.ensure(&self.health, &self.notices, self.timeout).await.map(|s| s.datname.clone());
        if primary_db.is_some() {
            match self.poll_statements().await {
                Ok(Some(batch)) => out.push(StatsMessage::Statements(batch)),
                Ok(None) => {}
                Err(f) => failed(Some(&mut self.primary), f, &self.health, &self.notices),
            }
        }
        let wanted = self.table_databases(primary_db.as_deref()).await;
        // Connections of databases no longer wanted are closed. (The
        // primary's own database is polled on the primary connection.)
        self.others.retain(|name, _| wanted.contains(name) && primary_db.as_deref() != Some(name.as_str()));
        for name in wanted {
            let is_primary = primary_db.as_deref() == Some(name.as_str());
            if !is_primary && !self.others.contains_key(&name) {
                let mut cfg = self.base.clone();
                cfg.dbname(&name);
                self.others.insert(name.clone(), DbConn::new(format!("database {name}"), cfg, &self.config));
            }
            let conn = if is_primary { Some(&mut self.primary) } else { self.others.get_mut(&name) };
            let Some(conn) = conn else { continue };
            match poll_tables(conn, &self.health, &self.notices, self.timeout).await {
                Ok(Some(batch)) => out.push(StatsMessage::Tables(batch)),
                Ok(None) => {}
                Err(f) => failed(Some(conn), f, &self.health, &self.notices),
            }
        }
        out
    }

    /// The databases whose tables to poll this interval.
    async fn table_databases(&mut self, primary_db: Option<&str>) -> Vec<String> {
        match &self.config.databases {
            Databases::FromDsn => primary_db.map(str::to_owned).into_iter().collect(),
            Databases::Listed(list) => list.clone(),
            Databases::All => {
                let mut known: Vec<String> = self.others.keys().cloned().collect();
                known.extend(primary_db.map(str::to_owned));
                let Some(session) = self.primary.session.as_ref() else {
                    // Without the primary, keep polling the databases known.
                    return known;
                };
                let listed = session.query("listing databases", sql::DATABASES, &[]).await.and_then(|rows| {
                    rows.iter().map(|r| col::<String>(r, "listing databases", 0)).collect::<Result<Vec<_>, _>>()
                });
                match listed {
                    Ok(list) => list,
                    Err(f) => {
                        failed(Some(&mut self.primary), f, &self.health, &self.notices);
                        known
                    }
                }
            }
        }
    }

    /// One pg_stat_statements poll on the primary session.
    async fn poll_statements(&mut self) -> Result<Option<StatementBatch>, Failure> {
        let Some(session) = self.primary.session.as_ref() else { return Ok(None) };
        let ext = session.query("looking up pg_stat_statements", sql::EXTENSION, &[]).await?;
        let Some(row) = ext.first() else {
            let (db, label) = (session.datname.clone(), self.primary.label.clone());
            self.notices.once(format!("extension:{db}"), || {
                format!(
                    "pg_stat_statements is not installed in {label}: no statement statistics. \
                     Fix, in that database: CREATE EXTENSION pg_stat_statements;"
                )
            });
            // When it comes back, its counters are of unknown age: baseline.
            self.statements.prev = None;
            return Ok(None);
        };
        let version: String = col(row, "pg_stat_statements version", 0)?;
        let schema: String = col(row, "pg_stat_statements version", 1)?;
        let pgss = Pgss {
            version: ExtVersion::parse(&version)
                .ok_or(Failure::Query(StatsError::Extension(format!("unreadable version {version:?}"))))?,
            schema,
        };
        if self.statements.sql.as_ref().is_none_or(|s| s.pgss != pgss) {
            if self.statements.sql.is_some() {
                // `ALTER EXTENSION pg_stat_statements UPDATE`: the new
                // version reads what the old did not (from 1.9 a
                // `stats_reset` that was NULL, nested entries apart from
                // top-level ones; plan time from 1.8), so the last snapshot
                // and the next cannot be compared: the next is a baseline.
                // Compared, every entry's lifetime went out as one delta.
                self.statements.prev = None;
                self.statements.texts.clear();
            }
            self.statements.sql = Some(StatementSql::new(&pgss));
        }
        let Some(q) = self.statements.sql.as_ref() else { return Ok(None) };

        let before = Header::read(session, "reading pg_stat_statements_info", &q.header).await?;
        let rows = session.query("reading pg_stat_statements", &q.counters, &[]).await?;
        let after = Header::read(session, "reading pg_stat_statements_info", &q.header).await?;
        if before.stats_reset != after.stats_reset || !before.epoch.same_run(&after.epoch) {
            // A reset between the reads: some rows may predate it, some not.
            PollerHealth::add(&self.health.torn_reads, 1);
            return Ok(None);
        }

        let mut counters = Vec::with_capacity(rows.len());
        let mut unattributed = FxHashSet::default();
        let mut missing: Vec<i64> = Vec::new();
        let what = "reading pg_stat_statements";
        for r in &rows {
            let userid: u32 = col(r, what, 0)?;
            let dbid: u32 = col(r, what, 1)?;
            let Some(queryid) = col::<Option<i64>>(r, what, 2)? else {
                unattributed.insert((userid, dbid));
                continue;
            };
            let key = StatementKey { userid, dbid, queryid, toplevel: col(r, what, 3)? };
            if !self.statements.texts.contains_key(&key) {
                missing.push(queryid);
            }
            let c = StatementCounters {
                calls: count(col(r, what, 6)?),
                total_exec_time: millis(col(r, what, 7)?),
                total_plan_time: millis(col(r, what, 8)?),
                rows: count(col(r, what, 9)?),
                shared_blks_hit: count(col(r, what, 10)?),
                shared_blks_read: count(col(r, what, 11)?),
                temp_blks_written: count(col(r, what, 12)?),
            };
            let names: (String, String) = (col(r, what, 4)?, col(r, what, 5)?);
            counters.push((key, names, c, col::<Option<SystemTime>>(r, what, 13)?));
        }
        if !unattributed.is_empty() {
            PollerHealth::add(&self.health.unattributed_rows, unattributed.len() as u64);
        }

        if !missing.is_empty() {
            // Texts only for keys never seen: reading the query text file
            // every interval would cost far more than the counters.
            missing.sort_unstable();
            missing.dedup();
            let rows = session.query("reading statement texts", &q.texts, &[&missing]).await?;
            for r in &rows {
                let what = "reading statement texts";
                let Some(queryid) = col::<Option<i64>>(r, what, 2)? else { continue };
                let key = StatementKey {
                    userid: col(r, what, 0)?,
                    dbid: col(r, what, 1)?,
                    queryid,
                    toplevel: col(r, what, 3)?,
                };
                // NULL when PostgreSQL could not read its query text file:
                // left out, so it is asked for again next time (and the
                // entry waits, counted as texts_missing) rather than cached
                // as an empty text for the entry's life.
                let Some(text) = col::<Option<String>>(r, what, 4)? else { continue };
                // The privacy boundary: only the masked text is kept.
                let masked = (!sql::is_own(&text)).then(|| Arc::<str>::from(mask(&text)));
                self.statements.texts.insert(key, masked);
            }
        }

        let mut snapshot = Snapshot {
            taken_at: before.now,
            server: before.epoch,
            stats_reset: before.stats_reset,
            dealloc: after.dealloc,
            entries: FxHashMap::default(),
            unattributed,
        };
        let mut live: FxHashSet<StatementKey> = FxHashSet::default();
        for (key, (datname, rolname), c, stats_since) in counters {
            live.insert(key);
            match self.statements.texts.get(&key) {
                Some(Some(query)) => {
                    let entry = StatementEntry {
                        datname: Arc::from(datname),
                        rolname: Arc::from(rolname),
                        query: query.clone(),
                        stats_since,
                        counters: c,
                    };
                    match snapshot.entries.entry(key) {
                        // PostgreSQL 14 and later keep top-level and nested
                        // executions apart, but pg_stat_statements before 1.9
                        // cannot say which is which: both rows have one key
                        // here, and one overwrote the other. Their sum is the
                        // statement's, whatever the level.
                        Entry::Occupied(mut o) => {
                            let e = o.get_mut();
                            e.counters = e.counters.saturating_add(&entry.counters);
                        }
                        Entry::Vacant(v) => {
                            v.insert(entry);
                        }
                    }
                }
                // The agent's own.
                Some(None) => {}
                // Evicted between the two reads; it is absent from this
                // snapshot, so next time it counts from zero: nothing lost,
                // since nothing of it was reported.
                None => PollerHealth::add(&self.health.texts_missing, 1),
            }
        }
        self.statements.texts.retain(|k, _| live.contains(k));
        PollerHealth::add(&self.health.polls, 1);

        let Some(prev) = self.statements.prev.replace(snapshot) else { return Ok(None) };
        let Some(cur) = self.statements.prev.as_ref() else { return Ok(None) };
        let mut report = DiffReport::default();
        let deltas = diff(&prev, cur, &mut report);
        let h = &self.health;
        PollerHealth::add(&h.restarts, u64::from(report.restart));
        PollerHealth::add(&h.resets, u64::from(report.reset));
        PollerHealth::add(&h.entries_reset, report.entries_reset);
        PollerHealth::add(&h.evicted, report.evicted);
        PollerHealth::add(&h.disappeared, report.disappeared);
        PollerHealth::add(&h.unknown_entries, report.unknown);
        if report.restart || deltas.is_empty() {
            return Ok(None);
        }
        Ok(Some(StatementBatch { since: prev.taken_at, until: cur.taken_at, deltas }))
    }
}

/// The activity side: its own connection, samples, and their aggregate.
struct ActivitySide {
    conn: DbConn,
    acc: ActivityAccumulator,
    timeout: Duration,
    health: Arc<PollerHealth>,
    notices: Arc<Notices>,
}

impl ActivitySide {
    async fn sample(&mut self) {
        let Some(session) = self.conn.ensure(&self.health, &self.notices, self.timeout).await else { return };
        match read_activity(session).await {
            Ok(samples) => {
                PollerHealth::add(&self.health.activity_samples, 1);
                let overflow = self.acc.overflow;
                self.acc.record(&samples);
                PollerHealth::add(&self.health.activity_overflow, self.acc.overflow - overflow);
            }
            Err(f) => {
                PollerHealth::add(&self.health.activity_failures, 1);
                failed(Some(&mut self.conn), f, &self.health, &self.notices);
            }
        }
    }

    fn take(&mut self) -> ActivityAggregate {
        self.acc.take(SystemTime::now())
    }

    /// `try_send`: an aggregate that does not fit is dropped and counted
    /// (samples are not cumulative: there is nothing to merge it into
    /// that would not grow without bound); `Err` when the receiver is gone.
    fn send(&mut self, tx: &mpsc::Sender<StatsMessage>, a: ActivityAggregate) -> Result<(), ()> {
        match tx.try_send(StatsMessage::Activity(a)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            Err(mpsc::error::TrySendError::Full(m)) => {
                PollerHealth::add(&self.health.activity_dropped, 1);
                if let StatsMessage::Activity(a) = m {
                    let backends: u64 = a.counts.iter().map(|(_, n)| n).sum();
                    PollerHealth::add(&self.health.activity_samples_dropped, backends);
                }
                Ok(())
            }
        }
    }
}

/// Adds `fresh` to `out`, merging a delta batch into a pending one of the
/// same kind (and database) so that the channel sees one per interval.
fn merge_into(out: &mut Vec<StatsMessage>, fresh: Vec<StatsMessage>) {
    for m in fresh {
        let slot = out.iter_mut().find(|o| match (&**o, &m) {
            (StatsMessage::Statements(_), StatsMessage::Statements(_)) => true,
            (StatsMessage::Tables(a), StatsMessage::Tables(b)) => a.datname == b.datname,
            _ => false,
        });
        match (slot, m) {
            (Some(StatsMessage::Statements(a)), StatsMessage::Statements(b)) => a.absorb(b),
            (Some(StatsMessage::Tables(a)), StatsMessage::Tables(b)) => a.absorb(b),
            (_, m) => out.push(m),
        }
    }
}

/// The columns every poll reads besides its counters.
struct Header {
    now: SystemTime,
    epoch: ServerEpoch,
    dealloc: Option<u64>,
    stats_reset: Option<SystemTime>,
}

impl Header {
    async fn read(session: &Session, what: &'static str, sql: &str) -> Result<Header, Failure> {
        let row = session.query_one(what, sql).await?;
        Ok(Header {
            now: col(&row, what, 0)?,
            epoch: ServerEpoch { postmaster_start: col(&row, what, 1)?, checkpointer_start: col(&row, what, 2)? },
            dealloc: col::<Option<i64>>(&row, what, 3)?.map(count),
            stats_reset: col(&row, what, 4)?,
        })
    }
}

/// One database's table statistics; `None` for a baseline or no change.
async fn poll_tables(
    conn: &mut DbConn,
    health: &PollerHealth,
    notices: &Notices,
    timeout: Duration,
) -> Result<Option<TableBatch>, Failure> {
    let Some(session) = conn.ensure(health, notices, timeout).await else { return Ok(None) };
    let what = "reading table statistics";
    let header_sql = sql::tables_header();
    let before = Header::read(session, what, &header_sql).await?;
    let rows = session.query(what, &sql::tables(session.server_version), &[]).await?;
    let after = Header::read(session, what, &header_sql).await?;
    if before.stats_reset != after.stats_reset {
        PollerHealth::add(&health.torn_reads, 1);
        return Ok(None);
    }
    let sizes: FxHashMap<u32, u64> = match session.query("reading relation sizes", sql::TABLE_SIZES, &[]).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| {
                let relid: u32 = r.try_get(0).ok()?;
                let size: Option<i64> = r.try_get(1).ok()?;
                Some((relid, count(size?)))
            })
            .collect(),
        Err(Failure::Lost(e)) => return Err(Failure::Lost(e)),
        // A lock timeout behind DDL: sizes are gauges, skip them this time.
        Err(Failure::Query(_)) => {
            PollerHealth::add(&health.size_failures, 1);
            FxHashMap::default()
        }
    };
    let name = |schema: Option<String>, rel: Option<String>| match (schema, rel) {
        (Some(s), Some(r)) => Some(RelName { schemaname: Arc::from(s), relname: Arc::from(r) }),
        _ => None,
    };
    let mut entries = FxHashMap::default();
    for r in &rows {
        let relid: u32 = col(r, what, 0)?;
        let c = TableCounters {
            seq_scan: count(col(r, what, 3)?),
            seq_tup_read: count(col(r, what, 4)?),
            idx_scan: count(col(r, what, 5)?),
            idx_tup_fetch: count(col(r, what, 6)?),
            n_tup_ins: count(col(r, what, 7)?),
            n_tup_upd: count(col(r, what, 8)?),
            n_tup_del: count(col(r, what, 9)?),
            heap_blks_read: count(col(r, what, 10)?),
            heap_blks_hit: count(col(r, what, 11)?),
        };
        let entry = TableEntry {
            name: RelName {
                schemaname: Arc::from(col::<String>(r, what, 1)?),
                relname: Arc::from(col::<String>(r, what, 2)?),
            },
            partition_parent: name(col(r, what, 12)?, col(r, what, 13)?),
            partition_root: name(col(r, what, 14)?, col(r, what, 15)?),
            size_bytes: sizes.get(&relid).copied(),
            counters: c,
        };
        entries.insert(relid, entry);
    }
    PollerHealth::add(&health.polls, 1);
    let snapshot = TableSnapshot {
        taken_at: before.now,
        server: before.epoch,
        datname: session.datname.clone(),
        stats_reset: before.stats_reset,
        entries,
    };
    let Some(prev) = conn.tables_prev.replace(snapshot) else { return Ok(None) };
    let Some(cur) = conn.tables_prev.as_ref() else { return Ok(None) };
    let mut report = TableDiffReport::default();
    let deltas = diff_tables(&prev, cur, &mut report);
    PollerHealth::add(&health.restarts, u64::from(report.restart));
    PollerHealth::add(&health.resets, u64::from(report.reset));
    PollerHealth::add(&health.entries_reset, report.entries_reset);
    PollerHealth::add(&health.disappeared, report.disappeared);
    if deltas.is_empty() {
        return Ok(None);
    }
    Ok(Some(TableBatch { datname: cur.datname.clone(), since: prev.taken_at, until: cur.taken_at, deltas }))
}

/// One pg_stat_activity sample, masked, the agent's own sessions left out.
async fn read_activity(session: &Session) -> Result<Vec<ActivitySample>, Failure> {
    let what = "sampling pg_stat_activity";
    let rows = session.query(what, &sql::activity(session.server_version), &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    let arc = |s: Option<String>| s.map(Arc::<str>::from);
    for r in &rows {
        let query: String = col(r, what, 8)?;
        if sql::is_own(&query) {
            continue;
        }
        out.push(ActivitySample {
            pid: col(r, what, 0)?,
            datname: arc(col(r, what, 1)?),
            usename: arc(col(r, what, 2)?),
            backend_type: Arc::from(col::<String>(r, what, 3)?),
            state: Arc::from(col::<String>(r, what, 4)?),
            wait_event_type: arc(col(r, what, 5)?),
            wait_event: arc(col(r, what, 6)?),
            query_id: col(r, what, 7)?,
            // The privacy boundary: the raw text goes no further.
            query: Arc::from(mask(&query)),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::TcpListener;

    use super::super::DeltaOrigin;
    use super::super::statements::StatementDelta;
    use super::*;

    #[test]
    fn config_is_validated_and_session_options_appended() {
        assert!(matches!(Poller::new(PollerConfig::new("host=h port=notaport")), Err(StatsError::Dsn(_))));
        let mut c = PollerConfig::new("host=h user=u dbname=app options='-c work_mem=4MB'");
        c.activity_interval = Duration::ZERO;
        assert!(matches!(Poller::new(c), Err(StatsError::Config(_))));
        let p = Poller::new(PollerConfig::new("host=h user=u dbname=app options='-c work_mem=4MB'")).unwrap();
        assert_eq!(p.stats.base.get_options(), Some("-c work_mem=4MB -c statement_timeout=5000 -c lock_timeout=1000"));
        assert_eq!(p.stats.base.get_application_name(), Some("querywatch"));
        assert_eq!(p.stats.primary.label, "database app");
    }

    fn batch(calls: u64, until: u64) -> StatementBatch {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        StatementBatch {
            since: t(until - 10),
            until: t(until),
            deltas: vec![StatementDelta {
                key: StatementKey { userid: 1, dbid: 2, queryid: 3, toplevel: true },
                datname: "app".into(),
                rolname: "web".into(),
                query: "SELECT $1".into(),
                origin: DeltaOrigin::Increment,
                counters: StatementCounters { calls, ..StatementCounters::default() },
            }],
        }
    }

    /// A full channel defers delta batches and merges them into the next
    /// interval's: the receiver eventually gets every call, once.
    #[tokio::test]
    async fn a_full_channel_defers_and_merges_deltas_and_counts_dropped_activity() {
        let mut p = Poller::new(PollerConfig::new("host=127.0.0.1 dbname=app")).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        p.stats.send(&tx, StatsMessage::Statements(batch(2, 10))).unwrap();
        p.stats.send(&tx, StatsMessage::Statements(batch(3, 20))).unwrap();
        let activity =
            ActivityAggregate { since: SystemTime::now(), until: SystemTime::now(), samples: 1, counts: vec![] };
        p.activity.send(&tx, activity).unwrap();
        assert_eq!(PollerHealth::get(&p.health.batches_deferred), 1);
        assert_eq!(PollerHealth::get(&p.health.activity_dropped), 1);

        let first = rx.recv().await.unwrap();
        let mut out = p.stats.pending_messages();
        merge_into(&mut out, vec![StatsMessage::Statements(batch(4, 30))]);
        assert_eq!(out.len(), 1);
        for m in out {
            p.stats.send(&tx, m).unwrap();
        }
        let second = rx.recv().await.unwrap();
        let calls = |m: &StatsMessage| match m {
            StatsMessage::Statements(b) => (b.deltas[0].counters.calls, b.until),
            _ => panic!("{m:?}"),
        };
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(calls(&first), (2, t(10)));
        assert_eq!(calls(&second), (7, t(30)), "3 deferred + 4 new, covering 10..30");
        drop(rx);
        assert!(p.stats.send(&tx, StatsMessage::Statements(batch(1, 40))).is_err(), "closed");
    }

    /// Nothing listening: the poller keeps retrying with backoff, counts
    /// the failures, never returns on its own, and stops on shutdown.
    #[tokio::test]
    async fn an_unreachable_server_is_retried_until_shutdown() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c = PollerConfig::new(format!("host=127.0.0.1 port={port} user=querywatch dbname=app"));
        c.statements_interval = Duration::from_millis(20);
        c.activity_interval = Duration::from_millis(10);
        c.backoff_initial = Duration::from_millis(5);
        c.backoff_max = Duration::from_millis(40);
        let p = Poller::new(c).unwrap();
        let health = p.health();
        let (tx, mut rx) = mpsc::channel(16);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(p.run(tx, async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        while PollerHealth::get(&health.connect_failures) < 3 {
            assert!(Instant::now() < deadline, "no retries seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!task.is_finished());
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        // Only (empty) activity aggregates came out: no statistics without a server.
        while let Ok(m) = rx.try_recv() {
            assert!(matches!(m, StatsMessage::Activity(ref a) if a.samples == 0), "{m:?}");
        }
        assert_eq!(PollerHealth::get(&health.connects), 0);
    }
}
