//! The collector's OTLP receiver: where agents (and any OpenTelemetry SDK
//! or Collector) send. OTLP/gRPC (default `0.0.0.0:4317`) and OTLP/HTTP
//! (default `0.0.0.0:4318`, protobuf and JSON), gzip, an optional bearer
//! token, optional TLS (DESIGN.md, "Collector outputs", "Failure
//! behaviour").
//!
//! Every request is decoded with [`querywatch_wire::otlp`], strictly for
//! data that claims to be ours and skipping what is not; the result goes
//! to the store as one [`Batch`] per resource, a request's batches
//! together in one slot of a bounded channel, with `try_send` semantics: a full queue is answered with "retry later"
//! (HTTP 503 + `Retry-After`, gRPC UNAVAILABLE + `RetryInfo`), never by
//! buffering more. What the sender must not retry gets a permanent status
//! (HTTP 400/401/413/415, gRPC INVALID_ARGUMENT/UNAUTHENTICATED/
//! RESOURCE_EXHAUSTED), and the receiver keeps serving. Foreign data is
//! accepted and reported as `partial_success` with a message, so an SDK
//! pointed here by mistake says so rather than failing silently.
//!
//! - [`counters`] — what was received, accepted, ignored, refused, and how
//!   long it took.
//! - `ingest` — the part both transports share: token, decode, hand-off.
//! - `grpc`, `http` — the two transports.
//! - `tls` — certificates, client certificates (mutual TLS), and the TLS
//!   handshakes for HTTP.
//! - [`conn`] — connection limits and timeouts for both listeners, and
//!   the HTTP/1.1 server loop (slow and idle senders).
//!
//! [`Receiver::bind`] binds the listeners and reports their addresses
//! (port 0 works), then [`Receiver::run`] serves until `shutdown`
//! resolves; [`serve`] does both.
//!
//! Shortcuts taken on purpose: HTTP/1.1 only on the HTTP port (gRPC is
//! the HTTP/2 transport); gRPC `bytes_received` counts the decoded
//! message, not the wire bytes.

pub mod conn;
pub mod counters;
mod grpc;
mod http;
mod ingest;
mod tls;

pub use conn::ConnLimits;
pub use counters::{IngestCounters, IngestSnapshot, render_metrics};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Default OTLP/gRPC listen address.
pub const DEFAULT_GRPC: &str = "0.0.0.0:4317";
/// Default OTLP/HTTP listen address.
pub const DEFAULT_HTTP: &str = "0.0.0.0:4318";
/// Default request size limit, compressed and decompressed.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;

/// Requests decoded at once per transport. Each can hold up to twice
/// `max_request_bytes` (the body and its inflated copy), so this bounds
/// the receiver's memory; more requests wait in the network, which pushes
/// back on senders. 16 × 2 × 16 MiB = 512 MiB in the worst case, a few MB
/// with agent-sized requests.
pub const MAX_IN_FLIGHT: usize = 16;
/// Longest a gRPC call may take, so a sender that stalls mid-message does
/// not hold a slot forever.
const GRPC_TIMEOUT: Duration = Duration::from_secs(60);

/// One agent's decoded data, on its way to the store.
#[derive(Debug)]
pub struct Batch {
    pub resource: querywatch_wire::otlp::ResourceInfo,
    pub obs: querywatch_wire::Observations,
    /// Data points (metrics) or log records (logs) of ours it was made
    /// from.
    pub points: u64,
}

/// Where a certificate chain and its private key are, both PEM, and the
/// CA certificates that client certificates must chain to (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `Some`: every client must present a certificate from these CAs.
    pub client_ca: Option<PathBuf>,
}

/// The receiver's validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address; `None`: no gRPC listener.
    pub grpc: Option<SocketAddr>,
    /// OTLP/HTTP listen address; `None`: no HTTP listener.
    pub http: Option<SocketAddr>,
    /// Required bearer token (`Authorization: Bearer <token>`); `None`:
    /// anyone may send.
    pub token: Option<String>,
    /// Serve TLS on both listeners.
    pub tls: Option<TlsFiles>,
    /// Largest request body, compressed and decompressed.
    pub max_request_bytes: usize,
    /// Connections per listener and their timeouts.
    pub limits: ConnLimits,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        let addr = |s: &str| s.parse().ok();
        ReceiverConfig {
            grpc: addr(DEFAULT_GRPC),
            http: addr(DEFAULT_HTTP),
            token: None,
            tls: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            limits: ConnLimits::default(),
        }
    }
}

/// Why the receiver could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(
        "cannot listen for OTLP/{transport} on {addr}: {source} \
         (port in use, or not allowed? set [receive] {key} = \"host:port\" to another address)"
    )]
    Bind { transport: &'static str, key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS file {}: {reason} (check [receive] tls_cert / tls_key)", path.display())]
    Tls { path: PathBuf, reason: String },
    #[error("client CA file {}: {reason} (check [receive] tls_client_ca)", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("nothing to serve: set [receive] grpc or http (or both) to a listen address")]
    NoListener,
    #[error("max_request_bytes must be at least 1")]
    ZeroLimit,
    #[error("OTLP/{transport} server on {addr} failed: {reason}")]
    Serve { transport: &'static str, addr: SocketAddr, reason: String },
}

/// A receiver with its listeners bound, not yet serving.
pub struct Receiver {
    grpc: Option<(TcpListener, SocketAddr)>,
    http: Option<(TcpListener, SocketAddr)>,
    pem: Option<(TlsFiles, tls::Pem)>,
    max_request_bytes: usize,
    limits: ConnLimits,
    ingest: Arc<ingest::Ingest>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("grpc", &self.grpc_addr())
            .field("http", &self.http_addr())
            .field("tls", &self.pem.as_ref().map(|(f, _)| f))
            .field("max_request_bytes", &self.max_request_bytes)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Reads the TLS files and binds the listeners: every configuration
    /// and address problem surfaces here, before anything is served.
    /// Decoded batches will go to `tx`; `counters` count everything.
    pub async fn bind(
        cfg: ReceiverConfig,
        tx: mpsc::Sender<Vec<Batch>>,
        counters: Arc<IngestCounters>,
    ) -> Result<Receiver, ReceiveError> {
        if cfg.grpc.is_none() && cfg.http.is_none() {
            return Err(ReceiveError::NoListener);
        }
        if cfg.max_request_bytes == 0 {
            return Err(ReceiveError::ZeroLimit);
        }
        let pem = match cfg.tls {
            Some(files) => {
                let pem = tls::read(&files)?;
                // Parse once now, so a bad file is a start-up error for
                // gRPC as well as HTTP.
                tls::server_config(&files, &pem)?;
                Some((files, pem))
            }
            None => None,
        };
        let grpc = match cfg.grpc {
            Some(addr) => Some(listen("gRPC", "grpc", addr).await?),
            None => None,
        };
        let http = match cfg.http {
            Some(addr) => Some(listen("HTTP", "http", addr).await?),
            None => None,
        };
        let ingest = Arc::new(ingest::Ingest::new(tx, counters, cfg.token));
        Ok(Receiver { grpc, http, pem, max_request_bytes: cfg.max_request_bytes, limits: cfg.limits, ingest })
    }

    /// The bound OTLP/gRPC address (the real port when bound to port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|(_, a)| *a)
    }

    /// The bound OTLP/HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, a)| *a)
    }

    /// [`Receiver::run`] for a task that has nobody to return an error to:
    /// a server failure is printed to stderr (bind errors, the likely
    /// ones, were already reported by [`Receiver::bind`]).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        if let Err(e) = self.run(shutdown).await {
            eprintln!("querywatch collector: OTLP receiver stopped: {e}");
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets
    /// requests in progress finish. Returns early only if a server fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ReceiveError> {
        let ingest = self.ingest;
        let counters = ingest.counters.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                // An error means the sender is gone, which is a stop too.
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let grpc = async {
            let Some((listener, addr)) = self.grpc else { return Ok(()) };
            let fail =
                |e: &dyn std::fmt::Display| ReceiveError::Serve { transport: "gRPC", addr, reason: e.to_string() };
            let mut builder = tonic::transport::Server::builder()
                .timeout(GRPC_TIMEOUT)
                .max_concurrent_streams(Some(u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX)))
                // Pings keep live agents' idle connections moving, so the
                // idle timeout (conn.rs) closes only dead or silent ones;
                // a peer that does not answer a ping is closed too.
                .http2_keepalive_interval(Some(conn::KEEPALIVE))
                .http2_keepalive_timeout(Some(conn::KEEPALIVE_TIMEOUT));
            if let Some((_, pem)) = &self.pem {
                let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
                let mut tls =
                    tonic::transport::ServerTlsConfig::new().identity(identity).timeout(tls::HANDSHAKE_TIMEOUT);
                if let Some(ca) = &pem.client_ca {
                    // Required, not optional: a client without a
                    // certificate fails the handshake.
                    tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
                }
                builder = builder.tls_config(tls).map_err(|e| fail(&e))?;
            }
            let counters = counters.clone();
            let layers = tower::ServiceBuilder::new()
                .map_response(move |resp| grpc::fix_status(&counters, resp))
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT));
            let (metrics, logs) = grpc::services(&ingest, self.max_request_bytes);
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(conn::accept(listener, self.limits)),
                Ok::<_, std::io::Error>,
            );
            builder
                .layer(layers)
                .add_service(metrics)
                .add_service(logs)
                .serve_with_incoming_shutdown(incoming, stopped())
                .await
                .map_err(|e| fail(&e))
        };
        let http = async {
            let Some((listener, _)) = self.http else { return Ok(()) };
            let state = Arc::new(http::HttpState { ingest: ingest.clone(), max_request_bytes: self.max_request_bytes });
            let app = http::router(state, MAX_IN_FLIGHT);
            let incoming = conn::accept(listener, self.limits);
            let header_timeout = self.limits.header_timeout;
            match &self.pem {
                Some((files, pem)) => {
                    let config = tls::server_config(files, pem)?;
                    conn::serve_http(tls::handshakes(incoming, config), app, header_timeout, stopped()).await;
                }
                None => conn::serve_http(incoming, app, header_timeout, stopped()).await,
            }
            Ok(())
        };
        let stop = async {
            shutdown.await;
            let _ = stop_tx.send(true);
            Ok(())
        };
        tokio::try_join!(grpc, http, stop).map(|_| ())
    }
}

/// Binds and serves: [`Receiver::bind`] then [`Receiver::run`].
pub async fn serve(
    cfg: ReceiverConfig,
    tx: mpsc::Sender<Vec<Batch>>,
    counters: Arc<IngestCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReceiveError> {
    Receiver::bind(cfg, tx, counters).await?.run(shutdown).await
}

/// Compares two secrets in time that does not depend on where they first
/// differ (their lengths may leak, their contents do not). For every
/// bearer token check in the collector.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

async fn listen(
    transport: &'static str,
    key: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ReceiveError> {
    let bind_error = |source| ReceiveError::Bind { transport, key, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}
