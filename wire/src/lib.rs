//! The contract the querywatch agent and collector share.
//!
//! Nothing here does I/O. The agent builds [`observations::Observations`] from
//! what it reads on a node; the collector (live) and `querywatch analyze`
//! (offline) merge them. Keeping the statistics types here means both sides
//! agree on units and merge rules by construction:
//!
//! - [`causes`] — an error's message with its causes, for people to read.
//! - [`names`] — OpenTelemetry attribute and metric names (one place for both binaries).
//! - [`histogram`] — the latency histogram (HDR, microseconds, < 1% relative error).
//! - [`stats`] — per-statement statistics and the slowest sample.
//! - [`observations`] — everything one agent saw in one interval (or one log file).
//! - [`dbstats`] — the statistics poller's deltas (pg_stat_statements, tables, activity samples).
//! - [`health`] — the agent's own health (reads per file, export, spool, poller connection).
//! - [`shape`] — what a masked text tells (read-only?), and the token that stands in for a withheld text.
//! - `fingerprint` (feature `fingerprint`) — pg_query fingerprints of masked shapes.
//! - [`otlp`] — [`Observations`] as OTLP metrics and logs, and back (the live agent → collector path).

pub mod causes;
pub mod dbstats;
#[cfg(feature = "fingerprint")]
pub mod fingerprint;
pub mod health;
pub mod histogram;
pub mod names;
pub mod observations;
pub mod otlp;
pub mod shape;
pub mod stats;

pub use causes::error_chain;
pub use dbstats::DbStats;
pub use health::AgentHealth;
pub use histogram::LatencyHistogram;
pub use observations::{Observations, StatementKey};
pub use stats::{Sample, StatementStats};
