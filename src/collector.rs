//! `querywatch collector`: the central service every agent sends to. With
//! no configuration it listens on the standard OTLP ports (4317 gRPC, 4318
//! HTTP) and serves `/metrics`, the JSON API and the web page on 8080.

use anyhow::Context;
use clap::Args;
use querywatch_collector::config::{Config, Overrides, RawConfig, read_file};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `querywatch collector`. Every option of the file is documented
/// in `deploy/collector.toml`; the flags below override it.
#[derive(Args, Debug)]
pub struct CollectorArgs {
    /// The collector's TOML configuration (optional: without it, the defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OTLP/gRPC listen address, or `off` (beats [receive] grpc; default 0.0.0.0:4317).
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<String>,
    /// OTLP/HTTP listen address, or `off` (beats [receive] http; default 0.0.0.0:4318).
    #[arg(long, value_name = "ADDR")]
    pub otlp_http: Option<String>,
    /// Listen address of /metrics, the API and the web page (beats [http] listen; default 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

pub fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let raw = match &args.config {
        Some(path) => read_file(path)?,
        None => RawConfig::default(),
    };
    let overrides = Overrides { grpc: args.grpc, otlp_http: args.otlp_http, listen: args.listen };
    let config = Config::resolve(raw, &overrides).with_context(|| match &args.config {
        Some(p) => format!("configuration {}", p.display()),
        None => "flags".to_owned(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let running = querywatch_collector::serve::start(config).await?;
        let show = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        eprintln!(
            "querywatch collector: OTLP gRPC {}, OTLP HTTP {}, API and /metrics on http://{}",
            show(running.grpc),
            show(running.otlp_http),
            running.api
        );
        running.run_until(shutdown_signal()).await;
        eprintln!("querywatch collector: stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM (what container runtimes send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
