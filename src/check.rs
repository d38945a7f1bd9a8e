//! `querywatch check`: reads the agent's configuration (same file, same
//! overrides as `querywatch agent`, plus `--dsn`), asks the server and the
//! filesystem, and prints one line per check with the fix for every
//! problem. The rules are `querywatch_agent::check`; this is the shell.

use crate::agent::ConfigArgs;
use anyhow::Context;
use clap::Args;
use querywatch_agent::check::{passed, run_blocking};
use std::process::ExitCode;

/// Flags of `querywatch check`: the agent's, so the same command line is checked.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// libpq connection string to check with (beats QUERYWATCH_DSN and [database] dsn).
    #[arg(long, value_name = "DSN")]
    pub dsn: Option<String>,
}

/// Exit 0 when the agent can do its job (warnings allowed), 1 when a check
/// failed; configuration errors are the caller's exit 2.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve(args.dsn)?;
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
