//! Shared helpers of the integration tests (one test binary, `tests/it`).
//!
//! - [`agent`]: the real `querywatch agent`, its config and an OTLP/gRPC receiver.
//! - [`cluster`]: throwaway PostgreSQL clusters ([`PgCluster`]).
//! - [`report`]: running `querywatch analyze --format json` and its report.
//! - [`pgss`]: pg_stat_statements dumps, grouped by querywatch fingerprint.
//! - [`compare`]: report versus pg_stat_statements, with the tolerance.

pub mod agent;
pub mod cluster;
pub mod compare;
pub mod pgss;
pub mod report;
pub mod workload;

pub use cluster::{ClusterOptions, PgCluster, fixtures_dir, skip_pg, workload_dir};

/// A program of the Python venv `scripts/deps.sh` creates (`target/pyenv`),
/// or `None` after [`missing_tool`] said so.
pub fn venv_bin(test: &str, name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    let why = format!(
        "{} is missing: run scripts/deps.sh (it creates target/pyenv with opentelemetry-proto, jsonschema, \
         check-jsonschema and kubernetes-validate)",
        p.display()
    );
    missing_tool(test, &why);
    None
}

/// A tool a test needs is missing (`why` says which and how to install it):
/// under `CI=true` that is a failure, never a skip; elsewhere the test says
/// loudly that it is skipped, and the caller returns.
pub fn missing_tool(test: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "{test}: {why}");
    eprintln!("{test}: SKIPPED because {why}");
}
