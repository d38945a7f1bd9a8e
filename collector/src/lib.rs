//! querywatch collector library: what sees every node.
//!
//! - [`fingerprint`] — pg_query fingerprints of masked shapes, cached.
//! - [`store`] — statistics per (fingerprint, database, user), merged from
//!   [`querywatch_wire::Observations`] of any number of nodes or files.
//! - [`plan`] — what an auto_explain plan says (seq scans, spills, loops).
//! - [`findings`] — detectors: pure functions of a store snapshot.
//! - [`report`] — the report (`analyze` now, the API later), text and JSON.
pub mod findings;
pub mod fingerprint;
pub mod plan;
pub mod report;
pub mod store;
