//! `querywatch`: one binary for the PostgreSQL query observability tools.
//!
//! A thin shell over the library crates: it parses flags into a validated
//! configuration and runs a subcommand. Errors reach the user through
//! `anyhow` with a message that says how to fix them.

mod agent;
mod analyze;
mod check;
mod collector;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc. The collector allocates a batch on
/// the threads that decode requests and frees it on the one that merges
/// it into the store; with glibc a fifth of the collector's CPU went to
/// malloc and free (arena locks, `malloc_consolidate`). Built without
/// transparent huge pages (`no_thp` in Cargo.toml): with them the agent's
/// resident size doubled. BENCHMARKS.md, "The store step, the decoder and
/// the allocator", has the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "querywatch",
    version,
    about = "Which PostgreSQL queries are slow, why, and where — from the logs and statistics of your own nodes.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Analyze PostgreSQL log files offline into a report (pgbadger's job).
    Analyze(analyze::AnalyzeArgs),
    /// Run the sidecar agent: follow this node's PostgreSQL logs and export OTLP to the collector.
    Agent(agent::AgentArgs),
    /// Check this node's PostgreSQL settings, privileges, logs and collector for the agent; print the fixes.
    Check(check::CheckArgs),
    /// Run the collector: receive OTLP from the agents, find bottlenecks and hot partitions, serve /metrics and the API.
    Collector(collector::CollectorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Check(args) => check::run(args),
        Command::Collector(args) => collector::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("querywatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
