//! `querywatch check`: reads the agent's configuration (same file, same
//! overrides as `querywatch agent`, plus `--dsn`), asks the server and the
//! filesystem, and prints one line per check with the fix for every
//! problem. The rules are `querywatch_agent::check`; this is the shell.

use anyhow::Context;
use clap::Args;
use querywatch_agent::check::{passed, run_blocking};
use querywatch_agent::config::{Config, Env, Overrides, read_file};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `querywatch check`: the agent's, so the same command line is checked.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The agent's TOML configuration file (see deploy/agent.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// libpq connection string to check with (beats QUERYWATCH_DSN and [database] dsn).
    #[arg(long, value_name = "DSN")]
    pub dsn: Option<String>,
    /// Collector OTLP endpoint (beats OTEL_EXPORTER_OTLP_ENDPOINT and [export] endpoint).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// This node's name (beats `node` in the file).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The server's log directory (beats [logs] directory).
    #[arg(long, value_name = "DIR")]
    pub log_directory: Option<PathBuf>,
    /// The agent's state directory (beats `state_dir`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Exit 0 when the agent can do its job (warnings allowed), 1 when a check
/// failed; configuration errors are the caller's exit 2.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let raw = read_file(&args.config)?;
    let overrides = Overrides {
        endpoint: args.endpoint,
        node: args.node,
        log_directory: args.log_directory,
        dsn: args.dsn,
        state_dir: args.state_dir,
        ..Overrides::default()
    };
    let config = Config::resolve(raw, &Env::from_process(), &overrides)
        .with_context(|| format!("configuration {}", args.config.display()))?;
    let findings = run_blocking(&config).context("starting the async runtime")?;
    for f in &findings {
        println!("{f}");
    }
    Ok(if passed(&findings) {
        println!("the agent can do its job");
        ExitCode::SUCCESS
    } else {
        println!("the agent cannot do its job: fix the FAIL lines above");
        ExitCode::from(1)
    })
}
