//! The statistics poller of the live agent: PostgreSQL's cumulative
//! statistics views turned into per-interval deltas, and `pg_stat_activity`
//! turned into wait-event samples.
//!
//! # What it reads
//! - `pg_stat_statements` every `statements_interval` (10 s): deltas per
//!   PostgreSQL key (`userid`, `dbid`, `queryid`, `toplevel`) with database,
//!   role and **masked** text ([`statements`]).
//! - `pg_stat_user_tables` + `pg_statio_user_tables` of each configured
//!   database, same interval: deltas per relation with its partition parent
//!   and size ([`tables`]).
//! - `pg_stat_activity` every `activity_interval` (1 s): backends that are
//!   not idle, counted per interval by state, wait event and masked text
//!   ([`activity`]).
//!
//! Deltas are computed by pure functions ([`statements::diff`],
//! [`tables::diff_tables`]) that never produce a negative delta across
//! `pg_stat_statements_reset()`, `pg_stat_reset()`, evictions, restarts and
//! crash restarts; see [`statements`] for the rules. The SQL, per server and
//! extension version, is all in [`sql`]; every statement carries the marker
//! comment `/* querywatch */`, and statements (and sessions) showing it are
//! never reported.
//!
//! # Privacy
//! Statement texts leave this module only through [`crate::mask::mask`]:
//! pg_stat_statements texts are normalized already, but utility statements
//! (`SET work_mem = '5MB'`) keep their constants, and pg_stat_activity shows
//! raw text.
//!
//! # Least privilege
//! The agent needs no superuser. Create its role once, as a superuser:
//!
//! ```sql
//! CREATE ROLE querywatch LOGIN;          -- plus a password or another auth method
//! GRANT pg_monitor TO querywatch;        -- pg_read_all_stats + pg_read_all_settings + pg_stat_scan_tables
//! ```
//!
//! and in the database named in the connection string (pg_stat_statements is
//! cluster-wide, its view lives in one database):
//!
//! ```sql
//! CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
//! ```
//!
//! with `shared_preload_libraries = 'pg_stat_statements'` in
//! `postgresql.conf` (a restart). Without `pg_monitor` the poller still runs
//! but sees only its own role's statements and sessions; it says so once,
//! with the `GRANT` that fixes it. Table statistics need `CONNECT` on each
//! database (granted to `PUBLIC` by default).
//!
//! # Failure behaviour
//! A lost connection or a server that is down is retried with exponential
//! backoff and jitter ([`backoff`]), counted in [`PollerHealth`]; nothing
//! panics and nothing stops but a closed output channel or the shutdown
//! signal. Only an invalid configuration is an error ([`Poller::new`]).
//!
//! # Output
//! [`StatsMessage`]s on a bounded `tokio::sync::mpsc` channel. When it is
//! full, delta batches are kept and merged into the next interval's (the
//! counters are cumulative, so nothing is lost, and the batch's
//! `since..until` says which span it covers); activity aggregates are
//! dropped and counted.
//!
//! # Not yet
//! - TLS to PostgreSQL: connections use `NoTls` (local socket or TCP on
//!   the node). `tokio-postgres-rustls` plugs in at `DbConn::connect`.
//! - Mapping to OTLP: that is the wire module's job; [`convert`] turns
//!   messages into its plain data (`querywatch_wire::dbstats`).

pub mod activity;
pub mod backoff;
pub mod convert;
pub mod counters;
pub mod poller;
pub mod sql;
pub mod statements;
pub mod tables;

use std::time::Duration;

pub use activity::{ActivityAggregate, ActivityKey, ActivitySample};
pub use counters::{DeltaOrigin, ServerEpoch};
pub use poller::{Databases, Poller, PollerConfig, PollerHealth};
pub use statements::{Snapshot, StatementBatch, StatementCounters, StatementDelta, StatementKey, diff};
pub use tables::{RelName, TableBatch, TableCounters, TableDelta, TableSnapshot, diff_tables};

/// What the poller sends.
#[derive(Clone, Debug, PartialEq)]
pub enum StatsMessage {
    /// pg_stat_statements deltas of one interval (cluster-wide).
    Statements(StatementBatch),
    /// Table deltas of one database for one interval.
    Tables(TableBatch),
    /// pg_stat_activity samples of one interval, counted.
    Activity(ActivityAggregate),
}

/// What can go wrong. Only [`StatsError::Dsn`] and [`StatsError::Config`]
/// come out of the API ([`Poller::new`]); the others are counted, reported
/// and retried inside the poller.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("invalid [database] dsn: {0}")]
    Dsn(#[source] tokio_postgres::Error),
    #[error("invalid [database] settings: {0}")]
    Config(String),
    #[error("{0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{what}: {source}")]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}: no answer within {timeout:?}")]
    Timeout { what: &'static str, timeout: Duration },
    #[error("{what}: the server returned no row")]
    NoRow { what: &'static str },
    #[error("PostgreSQL with server_version_num {0} is too old: 10 or newer is needed")]
    Unsupported(i32),
    #[error("pg_stat_statements: {0}")]
    Extension(String),
}
