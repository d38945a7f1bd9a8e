//! The collector's configuration: an optional TOML file and flags,
//! resolved into a validated [`Config`] (defaults < file < flags).
//!
//! With no file at all the collector starts on its defaults: OTLP/gRPC on
//! 4317, OTLP/HTTP on 4318, the API and `/metrics` on 8080. Only
//! configuration errors are fatal, so each says what is wrong and how to
//! fix it.

use crate::findings::{DetectorConfig, TrackerConfig};
use crate::forward::ForwardConfig;
use crate::receive::{ConnLimits, TlsFiles};
use crate::window::WindowConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// The file as written (every field optional; unknown fields rejected).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub receive: RawReceive,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub detect: RawDetect,
    #[serde(default)]
    pub forward: RawForward,
}

/// `[forward]`: push the collector's own metrics over OTLP/HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// OTLP/HTTP receiver: the full URL (`http://otel:4318/v1/metrics`) or
    /// its base (`http://otel:4318`, `/v1/metrics` is added). Unset: off.
    pub endpoint: Option<String>,
    /// How often to push (default 60s).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Time allowed for one push (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Bearer token sent with each push (default: none).
    pub token: Option<String>,
    /// `gzip` (default) or `none`.
    pub compression: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceive {
    /// OTLP/gRPC listen address (default `0.0.0.0:4317`; `off` disables).
    pub grpc: Option<String>,
    /// OTLP/HTTP listen address (default `0.0.0.0:4318`; `off` disables).
    pub http: Option<String>,
    /// Bearer token agents must send (default: none required).
    pub token: Option<String>,
    /// File holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for both OTLP listeners.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that agents' client certificates must chain
    /// to: mutual TLS, a client without such a certificate cannot connect.
    /// Needs `tls_cert` and `tls_key`.
    pub tls_client_ca: Option<PathBuf>,
    /// Open connections per OTLP listener (default 1024); past it new
    /// connections are closed at once.
    pub max_connections: Option<usize>,
    /// A connection on which nothing moves this long is closed (default 2m).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Largest request accepted, compressed or not (bytes, default 16 MiB).
    pub max_request_bytes: Option<usize>,
    /// Decoded batches waiting for the store; when full, senders are told
    /// to retry later (HTTP 503 / gRPC UNAVAILABLE, with the delay). Default 64
    /// (a decoded batch of 500 statements holds a few MiB until merged).
    pub queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Listen address of `/metrics`, the API and the web page (default `0.0.0.0:8080`).
    pub listen: Option<String>,
    /// Bearer token the API requires (default: none). `/metrics`,
    /// `/healthz` and `/readyz` stay open for Prometheus and probes.
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// How long 1-minute buckets are kept (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How long hourly rollups of older data are kept (default 24h).
    #[serde(default, with = "humantime_serde")]
    pub rollup_retention: Option<Duration>,
    /// Distinct fingerprints tracked (default 50000); the rest fold into `<other>`.
    pub max_fingerprints: Option<usize>,
    /// Distinct nodes tracked (default 1000).
    pub max_nodes: Option<usize>,
    /// Relations per minute bucket (default 100000).
    pub max_relations: Option<usize>,
    /// Memory the store may use for its buckets, MiB (default 1024).
    pub memory_limit_mb: Option<usize>,
    /// Fingerprints with their own series in `/metrics` (default 100).
    pub metrics_fingerprints: Option<usize>,
    /// Relations with their own series in `/metrics` (default 2000).
    pub metrics_relations: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    /// How often detectors run (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// The recent window detectors look at (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// The baseline before it, for regressions (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub baseline: Option<Duration>,
    /// How many fingerprints a detection pass looks at: this many with the
    /// most database time plus this many with the most calls (default
    /// 5000); the rest count in totals only. Bounds detection's memory.
    pub max_fingerprints: Option<usize>,
    /// Detector thresholds (`[detect.thresholds]`; see DetectorConfig).
    #[serde(default)]
    pub thresholds: DetectorConfig,
    /// Print each finding that opens or resolves on stderr (default true).
    pub log_findings: Option<bool>,
    /// Finding lifecycle (`[detect.findings]`: resolve_after,
    /// keep_resolved, max_resolved, max_open).
    #[serde(default)]
    pub findings: TrackerConfig,
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub grpc: Option<String>,
    pub otlp_http: Option<String>,
    pub listen: Option<String>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc: Option<SocketAddr>,
    pub otlp_http: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
    pub limits: ConnLimits,
    pub max_request_bytes: usize,
    pub queue: usize,
    pub api_token: Option<String>,
    pub store: WindowConfig,
    pub detect_interval: Duration,
    pub detect_window: Duration,
    pub baseline: Duration,
    pub detect_fingerprints: usize,
    pub detectors: DetectorConfig,
    pub tracker: TrackerConfig,
    pub log_findings: bool,
    pub forward: Option<ForwardConfig>,
}

/// Default `[store] memory_limit_mb`: the collector's memory budget.
pub const MEMORY_LIMIT_MB: usize = 1024;

/// The part of the memory budget the store's estimate may use (percent).
/// The rest is for what is not in the store: the receive queue and the
/// requests being decoded, detection passes and API answers (transient
/// copies of the top rows), the interned strings, the cumulative series of
/// `/metrics`, thread stacks, and the allocator's own slack. Measured with
/// the ingest bench (BENCHMARKS.md): with 50–100k fingerprints 200–250 MiB
/// lay outside the store's estimate, and transient peaks added up to
/// 100 MiB more; at half the budget a 512 MiB collector peaked at 513–524
/// MiB, so the store gets 40%.
pub const STORE_SHARE_PERCENT: usize = 40;

/// Bytes the store may hold for a budget of `mb` MiB.
pub fn store_share(mb: usize) -> usize {
    (mb << 20) / 100 * STORE_SHARE_PERCENT
}

/// Default `[detect] max_fingerprints`: far more statements than anyone
/// reads findings for, few enough that a pass stays in the tens of MB.
pub const DETECT_FINGERPRINTS: usize = 5000;

/// Reads a config file (a missing `--config` means defaults: pass
/// `RawConfig::default()` instead).
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

fn addr(field: &'static str, value: Option<String>, default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_owned());
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| invalid(field, format!("`{v}` is not an address: write it as 0.0.0.0:PORT")))
}

impl Config {
    pub fn resolve(file: RawConfig, flags: &Overrides) -> Result<Config, ConfigError> {
        let r = file.receive;
        let grpc = addr("receive.grpc", flags.grpc.clone().or(r.grpc), "0.0.0.0:4317")?;
        let otlp_http = addr("receive.http", flags.otlp_http.clone().or(r.http), "0.0.0.0:4318")?;
        let listen = addr("http.listen", flags.listen.clone().or(file.http.listen), "0.0.0.0:8080")?
            .ok_or_else(|| invalid("http.listen", "the API listener cannot be off: give it an address"))?;
        if grpc.is_none() && otlp_http.is_none() {
            return Err(invalid("receive", "both OTLP listeners are off: nothing could send data"));
        }
        let token = match (r.token, r.token_file) {
            (Some(_), Some(_)) => return Err(invalid("receive.token", "set token or token_file, not both")),
            (Some(t), None) => Some(t),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| invalid("receive.token_file", format!("cannot read {}: {e}", p.display())))?;
                Some(text.lines().next().unwrap_or_default().trim().to_owned())
            }
            (None, None) => None,
        };
        if token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("receive.token", "is empty: remove it to accept unauthenticated agents"));
        }
        let tls = match (r.tls_cert, r.tls_key, r.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles { cert, key, client_ca }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(invalid(
                    "receive.tls_client_ca",
                    "client certificates are checked in the TLS handshake: set tls_cert and tls_key too",
                ));
            }
            _ => return Err(invalid("receive.tls_cert", "TLS needs both tls_cert and tls_key")),
        };
        let d = ConnLimits::default();
        let limits = ConnLimits {
            max_connections: r.max_connections.unwrap_or(d.max_connections),
            idle_timeout: r.idle_timeout.unwrap_or(d.idle_timeout),
            ..d
        };
        if limits.max_connections == 0 {
            return Err(invalid("receive.max_connections", "must be at least 1"));
        }
        // Below the gRPC keepalive interval (30 s) a live agent's idle
        // channel would be closed between its pings.
        if limits.idle_timeout < Duration::from_secs(40) {
            return Err(invalid("receive.idle_timeout", "must be at least 40s (the gRPC keepalive is 30s)"));
        }
        let max_request_bytes = r.max_request_bytes.unwrap_or(16 << 20);
        if max_request_bytes < 1024 {
            return Err(invalid("receive.max_request_bytes", "must be at least 1024"));
        }
        let queue = r.queue.unwrap_or(64);
        if queue == 0 {
            return Err(invalid("receive.queue", "must be at least 1"));
        }
        let s = file.store;
        let d = WindowConfig::default();
        let store = WindowConfig {
            retention: s.retention.unwrap_or(d.retention),
            rollup_retention: s.rollup_retention.unwrap_or(d.rollup_retention),
            max_fingerprints: s.max_fingerprints.unwrap_or(d.max_fingerprints),
            max_nodes: s.max_nodes.unwrap_or(d.max_nodes),
            max_relations: s.max_relations.unwrap_or(d.max_relations),
            memory_limit: store_share(s.memory_limit_mb.unwrap_or(MEMORY_LIMIT_MB)),
            series_fingerprints: s.metrics_fingerprints.unwrap_or(d.series_fingerprints),
            series_tables: s.metrics_relations.unwrap_or(d.series_tables),
            ..d
        };
        if store.retention < Duration::from_secs(60) {
            return Err(invalid("store.retention", "must be at least 1m (one bucket)"));
        }
        if store.max_fingerprints == 0 || store.max_nodes == 0 {
            return Err(invalid("store", "max_fingerprints and max_nodes must be at least 1"));
        }
        let detect_interval = file.detect.interval.unwrap_or(Duration::from_secs(10));
        let detect_window = file.detect.window.unwrap_or(Duration::from_secs(300));
        let baseline = file.detect.baseline.unwrap_or(Duration::from_secs(3600));
        if detect_interval < Duration::from_secs(1) {
            return Err(invalid("detect.interval", "must be at least 1s"));
        }
        if file.detect.findings.resolve_after == 0 {
            return Err(invalid("detect.findings.resolve_after", "must be at least 1 (evaluations)"));
        }
        let detect_fingerprints = file.detect.max_fingerprints.unwrap_or(DETECT_FINGERPRINTS);
        if detect_fingerprints == 0 {
            return Err(invalid("detect.max_fingerprints", "must be at least 1"));
        }
        if detect_window < Duration::from_secs(60) {
            return Err(invalid("detect.window", "must be at least 1m (one bucket)"));
        }
        let forward = forward(file.forward)?;
        Ok(Config {
            grpc,
            otlp_http,
            listen,
            token,
            tls,
            limits,
            max_request_bytes,
            queue,
            api_token: file.http.token.filter(|t| !t.is_empty()),
            store,
            detect_interval,
            detect_window,
            baseline,
            detect_fingerprints,
            detectors: file.detect.thresholds,
            tracker: file.detect.findings,
            log_findings: file.detect.log_findings.unwrap_or(true),
            forward,
        })
    }
}

fn forward(f: RawForward) -> Result<Option<ForwardConfig>, ConfigError> {
    let Some(endpoint) = f.endpoint else {
        if f.interval.is_some() || f.timeout.is_some() || f.token.is_some() || f.compression.is_some() {
            return Err(invalid("forward.endpoint", "is not set, so the other [forward] keys do nothing: set it"));
        }
        return Ok(None);
    };
    let url = reqwest::Url::parse(&endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            invalid("forward.endpoint", format!("`{endpoint}` is not an http(s) URL: write e.g. http://otel:4318"))
        })?;
    let mut url = url;
    if matches!(url.path(), "" | "/") {
        url.set_path("/v1/metrics");
    }
    let url = url.to_string();
    let interval = f.interval.unwrap_or(Duration::from_secs(60));
    if interval < Duration::from_secs(1) {
        return Err(invalid("forward.interval", "must be at least 1s"));
    }
    let timeout = f.timeout.unwrap_or(Duration::from_secs(10));
    if timeout.is_zero() {
        return Err(invalid("forward.timeout", "must be more than 0s"));
    }
    if f.token.as_deref().is_some_and(str::is_empty) {
        return Err(invalid("forward.token", "is empty: remove it to push without a token"));
    }
    if let Some(t) = &f.token
        && reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).is_err()
    {
        return Err(invalid("forward.token", "has characters an HTTP header cannot carry (a newline?)"));
    }
    let gzip = match f.compression.as_deref() {
        None | Some("gzip") => true,
        Some("none") => false,
        Some(other) => return Err(invalid("forward.compression", format!("{other:?}: use gzip or none"))),
    };
    Ok(Some(ForwardConfig { url, interval, timeout, token: f.token, gzip }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_the_standard_ports() {
        let c = Config::resolve(RawConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(c.grpc.unwrap().port(), 4317);
        assert_eq!(c.otlp_http.unwrap().port(), 4318);
        assert_eq!(c.listen.port(), 8080);
        assert!(c.token.is_none());
    }

    #[test]
    fn flags_beat_the_file_and_errors_say_how_to_fix() {
        let raw: RawConfig = toml::from_str("[receive]\ngrpc = \"127.0.0.1:1\"\nhttp = \"off\"\n").unwrap();
        let c = Config::resolve(raw, &Overrides { grpc: Some("127.0.0.1:2".into()), ..Overrides::default() }).unwrap();
        assert_eq!(c.grpc.unwrap().port(), 2);
        assert!(c.otlp_http.is_none());
        let raw: RawConfig = toml::from_str("[receive]\ngrpc = \"nope\"\n").unwrap();
        let e = Config::resolve(raw, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("0.0.0.0:PORT"), "{e}");
        assert!(toml::from_str::<RawConfig>("[receive]\ngrcp = \"x\"\n").is_err(), "unknown keys are rejected");
        let raw: RawConfig = toml::from_str("[receive]\ntls_cert = \"c.pem\"\n").unwrap();
        assert!(Config::resolve(raw, &Overrides::default()).is_err());
    }

    #[test]
    fn mutual_tls_and_connection_limits_are_validated_with_the_key_named() {
        let resolve = |text: &str| Config::resolve(toml::from_str(text).unwrap(), &Overrides::default());
        let e = resolve("[receive]\ntls_client_ca = \"ca.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("receive.tls_client_ca") && e.contains("tls_cert"), "{e}");
        let c = resolve("[receive]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.limits, ConnLimits::default());
        let e = resolve("[receive]\nmax_connections = 0\n").unwrap_err().to_string();
        assert!(e.contains("receive.max_connections"), "{e}");
        let e = resolve("[receive]\nidle_timeout = \"5s\"\n").unwrap_err().to_string();
        assert!(e.contains("receive.idle_timeout"), "{e}");
        let c = resolve("[receive]\nmax_connections = 10\nidle_timeout = \"5m\"\n").unwrap();
        assert_eq!((c.limits.max_connections, c.limits.idle_timeout), (10, Duration::from_secs(300)));
    }

    #[test]
    fn the_documented_example_parses_with_every_option_uncommented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/collector.toml");
        let text = std::fs::read_to_string(path).unwrap();
        // Every "# key = value" line of the example, uncommented.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let raw: RawConfig = toml::from_str(&uncommented).unwrap();
        // token and token_file together are rejected, which proves both were read.
        let err = Config::resolve(raw, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
        let defaults: RawConfig = toml::from_str(&text).unwrap();
        assert!(Config::resolve(defaults, &Overrides::default()).is_ok());
    }

    #[test]
    fn forward_is_off_by_default_and_its_keys_are_checked() {
        let resolve = |text: &str| Config::resolve(toml::from_str(text).unwrap(), &Overrides::default());
        assert!(resolve("").unwrap().forward.is_none());
        let c = resolve("[forward]\nendpoint = \"http://otel:4318\"\n").unwrap().forward.unwrap();
        assert_eq!(c.url, "http://otel:4318/v1/metrics");
        assert_eq!(
            (c.interval, c.timeout, c.gzip, c.token),
            (Duration::from_secs(60), Duration::from_secs(10), true, None)
        );
        let c = resolve("[forward]\nendpoint = \"https://p:9090/api/v1/otlp/v1/metrics\"\ncompression = \"none\"\n")
            .unwrap()
            .forward
            .unwrap();
        assert_eq!((c.url.as_str(), c.gzip), ("https://p:9090/api/v1/otlp/v1/metrics", false));
        let c = resolve("[forward]\nendpoint = \"http://otel:4318/?tenant=a\"\n").unwrap().forward.unwrap();
        assert_eq!(c.url, "http://otel:4318/v1/metrics?tenant=a", "the path goes before the query");
        for (text, field) in [
            ("[forward]\nendpoint = \"otel:4318\"\n", "forward.endpoint"),
            ("[forward]\ninterval = \"5s\"\n", "forward.endpoint"),
            ("[forward]\nendpoint = \"http://o\"\ninterval = \"100ms\"\n", "forward.interval"),
            ("[forward]\nendpoint = \"http://o\"\ncompression = \"zstd\"\n", "forward.compression"),
            ("[forward]\nendpoint = \"http://o\"\ntoken = \"\"\n", "forward.token"),
            ("[forward]\nendpoint = \"http://o\"\ntoken = \"a\\nb\"\n", "forward.token"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.starts_with(field), "{text}: {e}");
        }
    }

    #[test]
    fn thresholds_and_lifecycle_come_from_the_detect_table() {
        let raw: RawConfig = toml::from_str(
            "[detect]\nwindow = \"10m\"\n[detect.thresholds]\nhot_partition_k = 2.5\nhot_node_min_time = \"2s\"\n\
             [detect.findings]\nresolve_after = 5\n",
        )
        .unwrap();
        let c = Config::resolve(raw, &Overrides::default()).unwrap();
        assert_eq!(c.detect_window, Duration::from_secs(600));
        assert!((c.detectors.hot_partition_k - 2.5).abs() < f64::EPSILON);
        assert_eq!(c.detectors.hot_node_min_time, Duration::from_secs(2));
        assert!((c.detectors.top_consumer_share - DetectorConfig::default().top_consumer_share).abs() < f64::EPSILON);
        assert_eq!(c.tracker.resolve_after, 5);
        assert!(toml::from_str::<RawConfig>("[detect.thresholds]\nhot_partiton_k = 2\n").is_err());
    }
}
