//! querywatch agent library: what runs on the database node.
//!
//! Pipeline stages, in data order:
//! - [`logparse`] — PostgreSQL log formats into [`logparse::LogEntry`] values.
//! - [`events`] — entries into statement executions, errors, lock waits,
//!   temp files and counted message classes (pairing lines of a session).
//! - [`mask`] — the privacy boundary: literals out, statement shapes in.
//! - [`plan`] — auto_explain plans: split and mask.
//! - [`aggregate`] — events into [`querywatch_wire::Observations`], with caps.
//! - [`withhold`] — fingerprints-only export: statement texts out, tokens in.
pub mod aggregate;
pub mod check;
pub mod config;
pub mod events;
pub mod export;
pub mod logparse;
pub mod mask;
pub mod plan;
pub mod run;
pub mod stats;
pub mod tail;
pub mod withhold;
