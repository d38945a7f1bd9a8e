//! Integration tests of the `querywatch` binary, compiled as one test binary
//! (shared helpers in `support`, one build).
//!
//! Tests that need PostgreSQL start their own throwaway cluster
//! (`support::PgCluster`); without the server binaries they fail and say to
//! run `scripts/deps.sh`, unless `QUERYWATCH_SKIP_PG=1`.

mod agent_faults;
mod agent_hostile;
mod agent_live;
mod analyze_pg;
mod check;
mod collector_e2e;
mod deploy_files;
mod formats;
mod forward;
mod mtls;
mod openapi;
mod privacy;
mod prometheus_live;
mod prometheus_rules;
mod stats_poll;
mod support;
mod web_page;
