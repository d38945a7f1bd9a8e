//! querywatch collector library: what sees every node.
//!
//! - [`fingerprint`] — pg_query fingerprints of masked shapes, cached.
//! - [`store`] — statistics per (fingerprint, database, user), merged from
//!   [`querywatch_wire::Observations`] of any number of nodes or files.
//! - [`sparse`] — a latency histogram as its non-empty buckets (per-minute rows).
//! - [`snapshot`] — one time range merged: what detectors, API and `/metrics` read.
//! - [`window`] — the live store: 1-minute buckets per (fingerprint, database,
//!   node), rolled up hourly, bounded in keys and memory.
//! - [`totals`] — cumulative counters since start, for Prometheus.
//! - [`plan`] — what an auto_explain plan says (seq scans, spills, loops).
//! - [`receive`] — the OTLP receiver (gRPC :4317, HTTP :4318): decodes,
//!   checks and hands [`receive::Batch`]es to the store, with backpressure.
//! - [`findings`] — detectors: pure functions of a snapshot, and the finding
//!   lifecycle (open, resolved, with hysteresis).
//! - [`load`] — load shares per partition and per node.
//! - [`config`] — the collector's configuration (TOML and flags).
//! - [`serve`] — the running collector: receiver → queue → store, detection
//!   passes, the HTTP listener.
//! - [`api`] — `/api/v1/*`, `/healthz`, `/readyz`; [`metrics`] — `/metrics`,
//!   built as an [`exposition`] of families; [`forward`] — the same
//!   families pushed over OTLP/HTTP; [`page`] — the built-in web page.
//! - [`report`] — the offline report of `analyze`, text and JSON.
pub mod api;
pub mod config;
pub mod exposition;
pub mod findings;
pub mod fingerprint;
pub mod forward;
pub mod load;
pub mod metrics;
pub mod page;
pub mod plan;
pub mod receive;
pub mod report;
pub mod serve;
pub mod snapshot;
pub mod sparse;
pub mod store;
pub mod totals;
pub mod window;
