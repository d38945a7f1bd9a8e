//! `querywatch agent`: the sidecar next to one PostgreSQL node. Flags become
//! [`Overrides`], the environment [`Env`], and [`Config::resolve`] applies
//! the precedence (defaults < file < environment < flags); the loop itself
//! is `querywatch_agent::run`.

use anyhow::Context;
use clap::Args;
use querywatch_agent::config::{Config, Env, Overrides, read_file};
use querywatch_agent::run::{RunOptions, run_blocking};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags that locate and override the agent's configuration, shared by
/// `querywatch agent` and `querywatch check` so both read the same setup.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The agent's TOML configuration file (see deploy/agent.toml for every option).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Collector OTLP endpoint, e.g. http://collector:4317 (beats OTEL_EXPORTER_OTLP_ENDPOINT and [export] endpoint).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf (beats OTEL_EXPORTER_OTLP_PROTOCOL and [export] protocol).
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<String>,
    /// This node's name, sent as querywatch.node (beats `node` in the file; default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The server's log directory to follow (beats [logs] directory).
    #[arg(long, value_name = "DIR")]
    pub log_directory: Option<PathBuf>,
    /// Where the agent keeps its checkpoint and spool (beats `state_dir`; default /var/lib/querywatch).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// Reads the file and applies the precedence (defaults < file <
    /// environment < flags); `dsn` is the one flag only `check` has.
    pub fn resolve(self, dsn: Option<String>) -> anyhow::Result<Config> {
        let raw = read_file(&self.config)?;
        let overrides = Overrides {
            endpoint: self.endpoint,
            protocol: self.protocol,
            node: self.node,
            log_directory: self.log_directory,
            state_dir: self.state_dir,
            dsn,
        };
        Config::resolve(raw, &Env::from_process(), &overrides)
            .with_context(|| format!("configuration {}", self.config.display()))
    }
}

/// Flags of `querywatch agent`. Every option of the file is documented in
/// `deploy/agent.toml`; the flags below override it.
#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Read what the logs hold now, export it as one batch, flush, checkpoint and exit (the last
    /// entry of a file still being written waits for the next run: it may not be complete).
    #[arg(long)]
    pub once: bool,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve(None)?;
    // Runtime errors were counted and said at exit; they never make the agent fail.
    run_blocking(config, RunOptions { once: args.once, ..RunOptions::default() })?;
    Ok(ExitCode::SUCCESS)
}
