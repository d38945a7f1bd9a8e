//! The agent's configuration: a TOML file, the standard OpenTelemetry
//! environment variables and command-line flags, resolved in one place
//! with one precedence rule — defaults < file < environment < flags — into
//! a validated [`Config`] whose fields are ready to use (durations as
//! `Duration`, a compiled prefix, a parsed endpoint).
//!
//! Only configuration errors are fatal in the agent, so every error here
//! says what is wrong and how to fix it.

use crate::logparse::{DEFAULT_ENTRY_CAP, LogFormat, Prefix};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    #[error("nothing to watch: set [logs] directory (or files) and/or [database] dsn")]
    NoSource,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// `export.ca_file`'s bytes, once they look like PEM certificates. The
/// transports parse them again (and say which certificate is broken); this
/// catches the usual mistakes early and with the file's name: a wrong
/// path, a DER file, a private key.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem =
        std::fs::read(path).map_err(|e| invalid("export.ca_file", format!("cannot read {}: {e}", path.display())))?;
    if !pem.windows(CERT_MARKER.len()).any(|w| w == CERT_MARKER) {
        return Err(invalid(
            "export.ca_file",
            format!("{}: no PEM certificate in it (expected a \"-----BEGIN CERTIFICATE-----\" block)", path.display()),
        ));
    }
    Ok(pem)
}

const CERT_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// `export.tls_cert` and `export.tls_key`, read and checked for the usual
/// mistakes (a wrong path, the two swapped, a DER file) with the key's
/// name; the transports parse them for real at start-up.
fn read_client_identity(cert: &Path, key: &Path) -> Result<ClientIdentity, ConfigError> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| invalid("export.tls_cert", format!("cannot read {}: {e}", cert.display())))?;
    if !cert_pem.windows(CERT_MARKER.len()).any(|w| w == CERT_MARKER) {
        return Err(invalid(
            "export.tls_cert",
            format!("{}: no PEM certificate in it (expected a \"-----BEGIN CERTIFICATE-----\" block)", cert.display()),
        ));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| invalid("export.tls_key", format!("cannot read {}: {e}", key.display())))?;
    const KEY_MARKER: &[u8] = b"PRIVATE KEY-----";
    if !key_pem.windows(KEY_MARKER.len()).any(|w| w == KEY_MARKER) {
        return Err(invalid(
            "export.tls_key",
            format!("{}: no PEM private key in it (expected a \"-----BEGIN PRIVATE KEY-----\" block)", key.display()),
        ));
    }
    Ok(ClientIdentity { cert_pem, key_pem })
}

/// The agent's TLS client certificate chain and its private key, both
/// PEM, for a collector that requires client certificates (mutual TLS).
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Never prints the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The file as written (every field optional; unknown fields rejected).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `querywatch.node`: this node's name (default: the host name).
    pub node: Option<String>,
    /// `querywatch.cluster`: the fleet this node belongs to.
    pub cluster: Option<String>,
    /// Aggregation and export interval (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Where this agent keeps its state (checkpoint, spool).
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub logs: RawLogs,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub export: RawExport,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    /// The server's log directory (`log_directory`).
    pub directory: Option<PathBuf>,
    /// File names to follow in `directory` (default `postgresql-*`).
    pub pattern: Option<String>,
    /// Explicit files instead of (or besides) a directory.
    pub files: Option<Vec<PathBuf>>,
    /// `auto`, `stderr`, `csvlog` or `jsonlog`.
    pub format: Option<String>,
    /// The server's `log_line_prefix`, for stderr logs.
    pub prefix: Option<String>,
    /// Where a first start begins: `end` (default) or `beginning`.
    pub start_at: Option<String>,
    /// Longest log entry kept (bytes); longer ones are truncated and counted.
    pub max_entry_bytes: Option<usize>,
    /// Distinct statement shapes per interval; the rest fold into `<other>`.
    pub max_shapes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// libpq-style connection string of a `pg_monitor` role.
    pub dsn: Option<String>,
    /// pg_stat_statements / pg_stat_user_tables poll interval (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub statements_interval: Option<Duration>,
    /// pg_stat_activity sampling interval (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub activity_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    /// Collector endpoint (default `http://localhost:4317` for grpc,
    /// `http://localhost:4318` for http/protobuf).
    pub endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: Option<String>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Sent as `authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Per-request timeout (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `gzip` (default) or `none`.
    pub compression: Option<String>,
    /// `masked` (default): statement texts leave with every literal
    /// replaced. `fingerprint`: no statement text leaves at all, only its
    /// fingerprint (see [`QueryText`]).
    pub query_text: Option<String>,
    /// Bound of the on-disk spool used while the collector is unreachable (default 256 MiB).
    pub spool_max_bytes: Option<u64>,
    /// PEM file of CA certificates to trust for an `https://` endpoint, in
    /// addition to the built-in (webpki) roots: a collector with a
    /// certificate from a private CA.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the agent presents to a collector that
    /// requires client certificates (mutual TLS); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// Log source settings, validated.
#[derive(Debug, Clone)]
pub struct LogsConfig {
    pub directory: Option<PathBuf>,
    pub pattern: glob::Pattern,
    pub files: Vec<PathBuf>,
    /// `None`: detect per file.
    pub format: Option<LogFormat>,
    pub prefix: Option<Prefix>,
    pub start_at_end: bool,
    pub max_entry_bytes: usize,
    pub max_shapes: usize,
}

/// Database source settings, validated.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub dsn: String,
    pub statements_interval: Duration,
    pub activity_interval: Duration,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What of a statement's text leaves the node (`export.query_text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryText {
    /// The masked text: literals replaced by `$n` (DESIGN.md's privacy line).
    #[default]
    Masked,
    /// No text: the agent fingerprints each masked shape itself and sends a
    /// token in its place (`querywatch_wire::shape::Withheld`). Plans
    /// (masked, and without their statement) and error messages (masked)
    /// still leave: the detectors read them.
    Fingerprint,
}

/// Export settings, validated.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub gzip: bool,
    pub query_text: QueryText,
    pub spool_max_bytes: u64,
    /// The PEM certificates of `export.ca_file`, read and checked at
    /// startup (trusted for `https://` endpoints on top of the webpki roots).
    pub ca_pem: Option<Vec<u8>>,
    /// `export.tls_cert` and `export.tls_key`: the client certificate
    /// presented over `https://` (mutual TLS).
    pub client_identity: Option<ClientIdentity>,
}

/// The agent's configuration, ready to use.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub cluster: String,
    pub interval: Duration,
    pub state_dir: PathBuf,
    /// `None`: no log source.
    pub logs: Option<LogsConfig>,
    /// `None`: no database source.
    pub database: Option<DatabaseConfig>,
    pub export: ExportConfig,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: BTreeMap<String, String>,
}

/// Values from command-line flags (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub node: Option<String>,
    pub log_directory: Option<PathBuf>,
    pub dsn: Option<String>,
    pub state_dir: Option<PathBuf>,
}

/// The environment variables the agent reads, passed in so tests need not
/// touch the process environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment (only the variables we read).
    pub fn from_process() -> Env {
        let names = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_RESOURCE_ATTRIBUTES",
            "QUERYWATCH_DSN",
            "HOSTNAME",
        ];
        Env { vars: names.iter().filter_map(|n| Some((n.to_string(), std::env::var(n).ok()?))).collect() }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

/// `k1=v1,k2=v2` as the OpenTelemetry specification writes headers and
/// resource attributes (values percent-decoded).
fn parse_pairs(field: &'static str, s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| invalid(field, format!("{part:?} is not key=value")))?;
        out.insert(percent_decode(k.trim()), percent_decode(v.trim()));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())
            && let Ok(byte) = u8::from_str_radix(v, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn protocol(field: &'static str, s: &str) -> Result<Protocol, ConfigError> {
    match s {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
        other => Err(invalid(field, format!("{other:?} is not a supported protocol: use grpc or http/protobuf"))),
    }
}

impl Config {
    /// Resolves defaults < file < environment < flags, and validates.
    pub fn resolve(file: RawConfig, env: &Env, flags: &Overrides) -> Result<Config, ConfigError> {
        let node = flags
            .node
            .clone()
            .or(file.node)
            .or_else(|| env.get("HOSTNAME").map(str::to_owned))
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("node", "cannot tell this node's name: set node = \"…\" in the config"))?;
        let interval = file.interval.unwrap_or(Duration::from_secs(10));
        if interval < Duration::from_secs(1) {
            return Err(invalid("interval", "must be at least 1s"));
        }
        let state_dir =
            flags.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from("/var/lib/querywatch"));

        let logs = Self::logs(file.logs, flags)?;
        let database = Self::database(file.database, env, flags)?;
        if logs.is_none() && database.is_none() {
            return Err(ConfigError::NoSource);
        }

        let x = file.export;
        let protocol = match flags.protocol.as_deref().or(env.get("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(p) => protocol("export.protocol", p)?,
            None => match x.protocol.as_deref() {
                Some(p) => protocol("export.protocol", p)?,
                None => Protocol::Grpc,
            },
        };
        // Precedence: flag > env > file > default (the OTel convention).
        let endpoint = flags
            .endpoint
            .clone()
            .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_owned))
            .or(x.endpoint)
            .unwrap_or_else(|| match protocol {
                Protocol::Grpc => "http://localhost:4317".to_owned(),
                Protocol::HttpProtobuf => "http://localhost:4318".to_owned(),
            });
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid("export.endpoint", format!("{endpoint:?} must start with http:// or https://")));
        }
        // File, then the file's token, then the environment: the
        // environment wins, as everywhere here. Names are lower-cased (HTTP
        // and gRPC metadata names are case-insensitive), so `Authorization`
        // from one place replaces `authorization` from another rather than
        // both being sent.
        let lower = |m: BTreeMap<String, String>| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
        let mut headers: BTreeMap<String, String> = lower(x.headers.unwrap_or_default()).collect();
        if let Some(token) = x.bearer_token {
            headers.insert("authorization".into(), format!("Bearer {token}"));
        }
        if let Some(h) = env.get("OTEL_EXPORTER_OTLP_HEADERS") {
            headers.extend(lower(parse_pairs("OTEL_EXPORTER_OTLP_HEADERS", h)?));
        }
        let gzip = match x.compression.as_deref() {
            None | Some("gzip") => true,
            Some("none") => false,
            Some(other) => return Err(invalid("export.compression", format!("{other:?}: use gzip or none"))),
        };
        let query_text = match x.query_text.as_deref() {
            None | Some("masked") => QueryText::Masked,
            Some("fingerprint") => QueryText::Fingerprint,
            Some(other) => {
                return Err(invalid(
                    "export.query_text",
                    format!("{other:?}: use masked (literals replaced) or fingerprint (no text at all)"),
                ));
            }
        };
        let ca_pem = match &x.ca_file {
            Some(path) => Some(read_ca_file(path)?),
            None => None,
        };
        let client_identity = match (&x.tls_cert, &x.tls_key) {
            (Some(cert), Some(key)) => Some(read_client_identity(cert, key)?),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("export.tls_key", "tls_cert is set: give its private key too")),
            (None, Some(_)) => return Err(invalid("export.tls_cert", "tls_key is set: give its certificate too")),
        };
        if client_identity.is_some() && !endpoint.starts_with("https://") {
            return Err(invalid(
                "export.tls_cert",
                format!("a client certificate is presented over TLS only: {endpoint:?} must start with https://"),
            ));
        }
        // A zero timeout failed every request at once (everything went to
        // the spool, "timed out"); one past a minute holds a batch far past
        // the retry budget.
        let timeout = x.timeout.unwrap_or(Duration::from_secs(10));
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
            return Err(invalid("export.timeout", "must be between 100ms and 60s (the default is 10s)"));
        }
        // A spool smaller than a batch drops every batch of an outage.
        let spool_max_bytes = x.spool_max_bytes.unwrap_or(256 << 20);
        if spool_max_bytes < 1 << 20 {
            return Err(invalid(
                "export.spool_max_bytes",
                "must be at least 1048576 (1 MiB; the default is 268435456, 256 MiB): a smaller spool \
                 holds no batch, and every batch of a collector outage would be dropped",
            ));
        }
        let resource = match env.get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(r) => parse_pairs("OTEL_RESOURCE_ATTRIBUTES", r)?,
            None => BTreeMap::new(),
        };
        Ok(Config {
            node,
            cluster: file.cluster.unwrap_or_default(),
            interval,
            state_dir,
            logs,
            database,
            export: ExportConfig {
                endpoint,
                protocol,
                headers,
                timeout,
                gzip,
                query_text,
                spool_max_bytes,
                ca_pem,
                client_identity,
            },
            resource,
        })
    }

    fn logs(raw: RawLogs, flags: &Overrides) -> Result<Option<LogsConfig>, ConfigError> {
        let directory = flags.log_directory.clone().or(raw.directory);
        let files = raw.files.unwrap_or_default();
        if directory.is_none() && files.is_empty() {
            return Ok(None);
        }
        let pattern_src = raw.pattern.unwrap_or_else(|| "postgresql-*".to_owned());
        let pattern =
            glob::Pattern::new(&pattern_src).map_err(|e| invalid("logs.pattern", format!("{pattern_src:?}: {e}")))?;
        let format = match raw.format.as_deref() {
            None | Some("auto") => None,
            Some(f) => Some(f.parse::<LogFormat>().map_err(|e| invalid("logs.format", e))?),
        };
        let prefix = match raw.prefix {
            Some(p) => Some(Prefix::compile(&p).map_err(|e| invalid("logs.prefix", e.to_string()))?),
            None => None,
        };
        let start_at_end = match raw.start_at.as_deref() {
            None | Some("end") => true,
            Some("beginning") => false,
            Some(other) => return Err(invalid("logs.start_at", format!("{other:?}: use end or beginning"))),
        };
        let max_entry_bytes = raw.max_entry_bytes.unwrap_or(DEFAULT_ENTRY_CAP);
        if max_entry_bytes < 1024 {
            return Err(invalid("logs.max_entry_bytes", "must be at least 1024"));
        }
        Ok(Some(LogsConfig {
            directory,
            pattern,
            files,
            format,
            prefix,
            start_at_end,
            max_entry_bytes,
            max_shapes: raw.max_shapes.unwrap_or(crate::aggregate::DEFAULT_MAX_SHAPES).max(1),
        }))
    }

    fn database(raw: RawDatabase, env: &Env, flags: &Overrides) -> Result<Option<DatabaseConfig>, ConfigError> {
        let Some(dsn) = flags.dsn.clone().or_else(|| env.get("QUERYWATCH_DSN").map(str::to_owned)).or(raw.dsn) else {
            return Ok(None);
        };
        let statements_interval = raw.statements_interval.unwrap_or(Duration::from_secs(10));
        let activity_interval = raw.activity_interval.unwrap_or(Duration::from_secs(1));
        if activity_interval < Duration::from_millis(100) || statements_interval < Duration::from_secs(1) {
            return Err(invalid(
                "database",
                "activity_interval must be at least 100ms and statements_interval at least 1s",
            ));
        }
        Ok(Some(DatabaseConfig { dsn, statements_interval, activity_interval }))
    }

    /// One line per source saying whether it is active and why, for the log at start.
    pub fn describe_sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.logs {
            Some(l) => out.push(format!(
                "log source: on ({}{}, format {})",
                l.directory.as_ref().map(|d| format!("{}/{}", d.display(), l.pattern)).unwrap_or_default(),
                if l.files.is_empty() { String::new() } else { format!(" + {} file(s)", l.files.len()) },
                l.format.map_or("auto".to_owned(), |f| f.to_string())
            )),
            None => out.push("log source: off (no [logs] directory or files configured)".to_owned()),
        }
        if let Some(escapes) = self.logs.as_ref().and_then(|l| l.prefix.as_ref()?.unknown_escapes()) {
            out.push(format!(
                "note: [logs] prefix: {escapes} unknown to this agent, read as any text (PostgreSQL writes nothing \
                 for an escape it does not know)"
            ));
        }
        match &self.database {
            Some(_) => out.push("database source: on ([database] dsn set)".to_owned()),
            None => out.push("database source: off (no [database] dsn or QUERYWATCH_DSN)".to_owned()),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RawConfig {
        toml::from_str(toml_text).unwrap()
    }

    const FILE: &str = r#"
node = "db-1"
cluster = "prod"
interval = "15s"
state_dir = "/tmp/qw"
[logs]
directory = "/var/log/postgresql"
pattern = "postgresql-*.csv"
format = "csvlog"
start_at = "beginning"
[database]
dsn = "host=/run/postgresql user=querywatch"
activity_interval = "500ms"
[export]
endpoint = "http://collector:4317"
headers = { "x-tenant" = "a" }
bearer_token = "s3cret"
"#;

    #[test]
    fn a_full_file_resolves() {
        let c = Config::resolve(parse(FILE), &Env::default(), &Overrides::default()).unwrap();
        assert_eq!(c.node, "db-1");
        assert_eq!(c.interval, Duration::from_secs(15));
        let logs = c.logs.unwrap();
        assert_eq!(logs.format, Some(LogFormat::Csv));
        assert!(!logs.start_at_end);
        assert!(logs.pattern.matches("postgresql-2026-11-24.csv"));
        assert_eq!(c.database.unwrap().activity_interval, Duration::from_millis(500));
        assert_eq!(c.export.endpoint, "http://collector:4317");
        assert_eq!(c.export.headers["authorization"], "Bearer s3cret");
        assert_eq!(c.export.headers["x-tenant"], "a");
        assert!(c.export.gzip);
        assert_eq!(c.export.query_text, QueryText::Masked);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let env = Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=b,x-extra=%20spaced"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging"),
        ]);
        let c = Config::resolve(parse(FILE), &env, &Overrides::default()).unwrap();
        assert_eq!(c.export.endpoint, "http://from-env:4317");
        assert_eq!(c.export.headers["x-tenant"], "b");
        assert_eq!(c.export.headers["x-extra"], " spaced");
        assert_eq!(c.resource["deployment.environment"], "staging");
        // The environment's token beats the file's, whatever its case.
        let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20rotated")]);
        let c = Config::resolve(parse(FILE), &env, &Overrides::default()).unwrap();
        assert_eq!(c.export.headers["authorization"], "Bearer rotated");
        assert_eq!(c.export.headers.keys().filter(|k| k.eq_ignore_ascii_case("authorization")).count(), 1);
        let flags = Overrides { endpoint: Some("https://from-flag:4317".into()), ..Overrides::default() };
        let c = Config::resolve(parse(FILE), &env, &flags).unwrap();
        assert_eq!(c.export.endpoint, "https://from-flag:4317");
        let c = Config::resolve(parse("[logs]\ndirectory = \"/x\""), &Env::default(), &Overrides::default()).unwrap();
        assert_eq!(c.export.endpoint, "http://localhost:4317");
        assert_eq!(c.export.protocol, Protocol::Grpc);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert!(c.database.is_none());
    }

    #[test]
    fn bad_configurations_say_how_to_fix_them() {
        let cases = [
            ("node = \"n\"", "nothing to watch"),
            ("node = \"n\"\nbogus = 1\n[logs]\ndirectory = \"/x\"", "unknown field"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\nformat = \"xml\"", "logs.format"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nendpoint = \"collector:4317\"", "http://"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nprotocol = \"thrift\"", "grpc or http/protobuf"),
            (
                "node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nquery_text = \"none\"",
                "masked (literals replaced) or fingerprint",
            ),
            ("node = \"n\"\ninterval = \"10ms\"\n[logs]\ndirectory = \"/x\"", "at least 1s"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\ntimeout = \"0s\"", "export.timeout"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\ntimeout = \"1h\"", "between 100ms and 60s"),
            ("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nspool_max_bytes = 0", "at least 1048576"),
            ("node = \"n\"\ninterval = \"soon\"\n[logs]\ndirectory = \"/x\"", "interval"),
        ];
        for (text, want) in cases {
            let err = match toml::from_str::<RawConfig>(text) {
                Err(e) => e.to_string(),
                Ok(raw) => Config::resolve(raw, &Env::default(), &Overrides::default()).unwrap_err().to_string(),
            };
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn ca_file_must_be_readable_pem() {
        let dir = tempfile::tempdir().unwrap();
        let der = dir.path().join("ca.der");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a]).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let resolve = |path: &Path| {
            let text = format!(
                "node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nca_file = {:?}",
                path.display().to_string()
            );
            Config::resolve(toml::from_str(&text).unwrap(), &Env::default(), &Overrides::default())
        };
        let err = resolve(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(err.contains("export.ca_file") && err.contains("cannot read") && err.contains("missing.pem"), "{err}");
        let err = resolve(&der).unwrap_err().to_string();
        assert!(err.contains("export.ca_file") && err.contains("no PEM certificate"), "{err}");
        let ok = resolve(&pem).unwrap();
        assert!(ok.export.ca_pem.is_some_and(|p| p.starts_with(b"-----BEGIN")));
    }

    #[test]
    fn client_certificates_are_validated_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("agent.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let key = dir.path().join("agent.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let resolve = |endpoint: &str, lines: &str| {
            let text = format!("node = \"n\"\n[logs]\ndirectory = \"/x\"\n[export]\nendpoint = {endpoint:?}\n{lines}");
            Config::resolve(toml::from_str(&text).unwrap(), &Env::default(), &Overrides::default())
        };
        let pair = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert.display().to_string(), key.display().to_string());
        let ok = resolve("https://collector:4317", &pair).unwrap();
        let id = ok.export.client_identity.unwrap();
        assert!(id.key_pem.starts_with(b"-----BEGIN PRIVATE KEY"));
        assert!(!format!("{id:?}").contains("AAAA"), "the key never shows in Debug output");
        let cases = [
            ("https://c:4317", format!("tls_cert = {:?}\n", cert.display().to_string()), "export.tls_key"),
            ("https://c:4317", format!("tls_key = {:?}\n", key.display().to_string()), "export.tls_cert"),
            ("http://c:4317", pair.clone(), "https://"),
            (
                "https://c:4317",
                format!("tls_cert = {:?}\ntls_key = {:?}\n", key.display().to_string(), cert.display().to_string()),
                "export.tls_cert",
            ),
            (
                "https://c:4317",
                format!("tls_cert = {:?}\ntls_key = \"/nonexistent/k.pem\"\n", cert.display().to_string()),
                "export.tls_key",
            ),
        ];
        for (endpoint, lines, want) in cases {
            let err = resolve(endpoint, &lines).unwrap_err().to_string();
            assert!(err.contains(want), "{lines}: {err}");
        }
    }
}
