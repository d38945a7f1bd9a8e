//! `querywatch check`: is this node set up so the agent can do its job?
//!
//! Split in two so almost everything is tested without a server:
//! - [`gather`] (thin, async): connects with the agent's DSN, reads
//!   `pg_settings`, the role's membership in `pg_monitor` and whether
//!   pg_stat_statements is created; lists the log directory; opens a TCP
//!   connection to the collector. It only collects [`Facts`].
//! - [`evaluate`] and the `check_*` rules (pure): [`Facts`] and the
//!   agent's [`Config`] into [`Finding`]s, each `ok`, `warn` or `FAIL`, and
//!   for every problem the exact fix (SQL or a `postgresql.conf` line).
//!
//! `FAIL` means the agent cannot do its job (the exit code is 1); `warn`
//! means it works with less (fewer statements seen, no session pairing).

use crate::config::Config;
use crate::logparse::{LogFormat, Prefix};
use querywatch_wire::error_chain;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `pg_settings` as `name → setting` (the raw `setting` column, e.g.
/// `log_min_duration_statement` in milliseconds).
pub type Settings = BTreeMap<String, String>;

/// How long the collector may take to accept a TCP connection: `check` is
/// run by a person waiting at a terminal.
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the whole database part (connect + queries).
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The verdict of one check. Ordered: the worst is the greatest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// The setting or subject checked, e.g. `log_min_duration_statement`.
    pub name: String,
    pub message: String,
    /// What to run or write to fix it (set for every `warn` and `FAIL`).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(name: &str, message: impl Into<String>) -> Finding {
        Finding { status: Status::Ok, name: name.to_owned(), message: message.into(), fix: None }
    }
    fn warn(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { status: Status::Warn, name: name.to_owned(), message: message.into(), fix: Some(fix.into()) }
    }
    fn fail(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { status: Status::Fail, name: name.to_owned(), message: message.into(), fix: Some(fix.into()) }
    }
}

impl fmt::Display for Finding {
    /// `FAIL name: message` and, indented below it, `fix: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}: {}", self.status.to_string(), self.name, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n     fix: {fix}")?;
        }
        Ok(())
    }
}

/// True when no finding is a `FAIL`: the agent can do its job.
pub fn passed(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.status != Status::Fail)
}

/// What the database told us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbFacts {
    pub settings: Settings,
    /// `current_database()`, quoted as an identifier.
    pub database: String,
    /// `current_user`, quoted as an identifier (ready for a GRANT).
    pub role: String,
    /// `pg_has_role(current_user, 'pg_monitor', 'USAGE')` (true for superusers).
    pub pg_monitor: bool,
    /// `pg_stat_statements` is created in the connected database.
    pub pgss_installed: bool,
}

/// What listing the log directory found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDirProbe {
    /// Neither the config nor the server (`log_directory`, `data_directory`)
    /// says where the logs are.
    Unknown,
    /// `missing`: it does not exist (a wrong path, not a permission).
    Unreadable { dir: PathBuf, pattern: String, error: String, missing: bool },
    /// Readable, `matching` files match the pattern, `readable` of them open.
    Listed { dir: PathBuf, pattern: String, matching: usize, readable: usize },
}

/// What connecting to the collector found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProbe {
    Reachable { endpoint: String, addr: SocketAddr },
    Unreachable { endpoint: String, error: String },
}

/// Everything [`gather`] collects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `Err`: why the database could not be read (no DSN, connection refused, …).
    pub database: Result<DbFacts, String>,
    pub log_dir: LogDirProbe,
    pub endpoint: EndpointProbe,
}

fn setting<'a>(s: &'a Settings, name: &str) -> Option<&'a str> {
    s.get(name).map(String::as_str)
}

/// A comma-separated list setting (`shared_preload_libraries`,
/// `log_destination`), items trimmed and unquoted, empty ones dropped.
fn list(value: &str) -> Vec<String> {
    value.split(',').map(|v| v.trim().trim_matches('"').to_owned()).filter(|v| !v.is_empty()).collect()
}

/// Quotes a postgresql.conf string value.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

const RELOAD: &str = "SELECT pg_reload_conf();";

/// `log_min_duration_statement`: -1 logs no durations (nothing to watch
/// in the logs); > 0 only slower statements.
pub fn check_min_duration(s: &Settings) -> Finding {
    const NAME: &str = "log_min_duration_statement";
    let fix_all = format!("ALTER SYSTEM SET log_min_duration_statement = 0; {RELOAD}");
    match setting(s, NAME).map(|v| v.trim().parse::<i64>()) {
        None => Finding::fail(NAME, "not readable", fix_all),
        Some(Err(_)) => Finding::fail(NAME, "not a number", fix_all),
        Some(Ok(ms)) if ms < 0 => {
            Finding::fail(NAME, "-1: no statement durations are logged, the logs show no queries", fix_all)
        }
        Some(Ok(0)) => Finding::ok(NAME, "0: every statement is logged with its duration"),
        Some(Ok(ms)) => Finding::warn(
            NAME,
            format!("{ms} ms: only statements slower than {ms} ms are seen in the logs"),
            format!("to see every statement: {fix_all}"),
        ),
    }
}

/// `pg_stat_statements` in `shared_preload_libraries` (the poller reads it).
pub fn check_preload(s: &Settings) -> Finding {
    const NAME: &str = "shared_preload_libraries";
    let current = setting(s, NAME).map(list).unwrap_or_default();
    if current.iter().any(|l| l == "pg_stat_statements") {
        return Finding::ok(NAME, "pg_stat_statements is preloaded");
    }
    let mut wanted = current.clone();
    wanted.push("pg_stat_statements".to_owned());
    Finding::fail(
        NAME,
        format!(
            "pg_stat_statements is not preloaded ({})",
            if current.is_empty() { "empty" } else { "other libraries only" }
        ),
        format!(
            "postgresql.conf: shared_preload_libraries = {} (then restart PostgreSQL)",
            conf_quote(&wanted.join(","))
        ),
    )
}

/// The extension created in the database the agent connects to.
pub fn check_pgss_extension(db: &DbFacts) -> Finding {
    const NAME: &str = "pg_stat_statements extension";
    if db.pgss_installed {
        Finding::ok(NAME, format!("created in database {}", db.database))
    } else {
        Finding::fail(
            NAME,
            format!("not created in database {} (the one in the DSN)", db.database),
            format!("as a superuser, in database {}: CREATE EXTENSION IF NOT EXISTS pg_stat_statements;", db.database),
        )
    }
}

/// Whether the agent reads stderr-format logs (where the prefix matters).
fn reads_stderr(s: &Settings, configured: Option<LogFormat>) -> bool {
    match configured {
        Some(f) => f == LogFormat::Stderr,
        None => setting(s, "log_destination").map(list).unwrap_or_default().iter().any(|d| d == "stderr"),
    }
}

/// `log_line_prefix`: `%p`/`%c` pair a session's lines (a duration with its
/// statement, an error with its STATEMENT line); `%m`/`%t`/`%n` time them.
/// And the `[logs] prefix` of the config must be the server's, or no line
/// of a stderr log matches.
pub fn check_prefix(s: &Settings, configured_format: Option<LogFormat>, configured: Option<&str>) -> Vec<Finding> {
    const NAME: &str = "log_line_prefix";
    if !reads_stderr(s, configured_format) {
        return vec![Finding::ok(NAME, "not used: the agent reads csvlog/jsonlog, which carry every field")];
    }
    let Some(server) = setting(s, NAME) else {
        return vec![Finding::fail(NAME, "not readable", "GRANT pg_monitor (it includes pg_read_all_settings)")];
    };
    let mut out = Vec::new();
    match Prefix::compile(server) {
        Err(e) => {
            out.push(Finding::warn(NAME, format!("cannot be parsed: {e}"), "use the escapes PostgreSQL documents"))
        }
        Ok(p) => {
            if let Some(escapes) = p.unknown_escapes() {
                out.push(Finding::warn(
                    NAME,
                    format!("{server:?}: {escapes} unknown to this agent, read as any text"),
                    "nothing, unless lines go unparsed; then drop the escape from log_line_prefix",
                ));
            }
            let (session, time) = (p.has_session(), p.has_time());
            if session && time {
                out.push(Finding::ok(NAME, format!("{server:?} has a session (%p/%c) and a time (%m/%t/%n)")));
            } else {
                // Prepending keeps whatever the user had and adds what is missing.
                let fixed = format!("{}{}{server}", if time { "" } else { "%m " }, if session { "" } else { "[%p] " });
                let fix = format!(
                    "ALTER SYSTEM SET log_line_prefix = {}; {RELOAD} (and the same as [logs] prefix)",
                    conf_quote(&fixed)
                );
                if !session {
                    out.push(Finding::warn(
                        NAME,
                        format!(
                            "{server:?} has no %p or %c: a duration cannot be paired with its session's other lines"
                        ),
                        fix.clone(),
                    ));
                }
                if !time {
                    out.push(Finding::warn(
                        NAME,
                        format!("{server:?} has no %m, %t or %n: entries carry no time, intervals are guessed"),
                        fix,
                    ));
                }
            }
        }
    }
    const CONF: &str = "[logs] prefix";
    match configured {
        None => out.push(Finding::ok(CONF, "not set: the agent detects the prefix")),
        Some(c) if c == server => out.push(Finding::ok(CONF, "equals the server's log_line_prefix")),
        Some(c) => out.push(Finding::fail(
            CONF,
            format!("{c:?} differs from the server's log_line_prefix {server:?}: no stderr line would match"),
            format!("in the agent's config: [logs] prefix = {}", toml_quote(server)),
        )),
    }
    out
}

fn toml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `log_destination` must include the format the agent reads (any file
/// format when it detects it), and `logging_collector` writes them to files.
pub fn check_destination(s: &Settings, configured: Option<LogFormat>) -> Vec<Finding> {
    const NAME: &str = "log_destination";
    let dest = setting(s, NAME).map(list).unwrap_or_default();
    let shown = dest.join(",");
    let mut out = Vec::new();
    match configured {
        Some(f) => {
            let want = f.to_string();
            if dest.contains(&want) {
                out.push(Finding::ok(NAME, format!("{shown:?} includes {want}, the configured format")));
            } else {
                let mut fixed = dest.clone();
                fixed.push(want.clone());
                out.push(Finding::fail(
                    NAME,
                    format!("{shown:?} does not include {want}, the [logs] format the agent reads"),
                    format!("ALTER SYSTEM SET log_destination = {}; {RELOAD}", conf_quote(&fixed.join(","))),
                ));
            }
        }
        None => {
            if dest.iter().any(|d| matches!(d.as_str(), "stderr" | "csvlog" | "jsonlog")) {
                out.push(Finding::ok(NAME, format!("{shown:?} (format detected per file)")));
            } else {
                out.push(Finding::fail(
                    NAME,
                    format!("{shown:?} has none of stderr, csvlog, jsonlog: the agent reads no syslog/eventlog"),
                    format!("ALTER SYSTEM SET log_destination = 'csvlog'; {RELOAD}"),
                ));
            }
        }
    }
    if setting(s, "logging_collector") == Some("off") {
        out.push(Finding::warn(
            "logging_collector",
            "off: csvlog/jsonlog are not written and stderr goes wherever the server's stderr goes",
            "postgresql.conf: logging_collector = on (then restart PostgreSQL)",
        ));
    }
    out
}

/// `compute_query_id` (PG 14+): query ids in the logs (`%Q`, `query_id`)
/// join log entries to pg_stat_statements. `auto` is on once
/// pg_stat_statements is preloaded.
pub fn check_query_id(s: &Settings) -> Finding {
    const NAME: &str = "compute_query_id";
    let preloaded =
        setting(s, "shared_preload_libraries").map(list).unwrap_or_default().iter().any(|l| l == "pg_stat_statements");
    let fix = format!("ALTER SYSTEM SET compute_query_id = on; {RELOAD}");
    match setting(s, NAME) {
        None => Finding::ok(NAME, "not in this server version (before 14): no query ids in the logs"),
        Some("on" | "regress") => Finding::ok(NAME, "on"),
        Some("auto") if preloaded => Finding::ok(NAME, "auto, on with pg_stat_statements preloaded"),
        Some(v) => Finding::warn(NAME, format!("{v}: log entries carry no query id"), fix),
    }
}

/// `lc_messages`: the agent recognizes messages (`duration: …`, `LOG:`) by
/// their English text; a translated server yields nothing.
pub fn check_lc_messages(s: &Settings) -> Finding {
    const NAME: &str = "lc_messages";
    let fix = format!("ALTER SYSTEM SET lc_messages = 'C'; {RELOAD}");
    match setting(s, NAME) {
        None => Finding::fail(NAME, "not readable", fix),
        Some("") => Finding::warn(NAME, "empty: inherited from the server's environment, may be translated", fix),
        Some(v) if is_english(v) => Finding::ok(NAME, format!("{v:?}: untranslated messages")),
        Some(v) => {
            Finding::fail(NAME, format!("{v:?}: messages are translated, the agent matches them in English"), fix)
        }
    }
}

fn is_english(locale: &str) -> bool {
    let l = locale.to_ascii_lowercase();
    l == "c" || l == "posix" || l.starts_with("c.") || l == "en" || l.starts_with("en_") || l.starts_with("en.")
}

/// The agent's role needs `pg_monitor` to see other roles' statements.
pub fn check_pg_monitor(db: &DbFacts) -> Finding {
    const NAME: &str = "privileges";
    if db.pg_monitor {
        Finding::ok(NAME, format!("role {} has pg_monitor", db.role))
    } else {
        Finding::fail(
            NAME,
            format!("role {} lacks pg_monitor: it sees only its own statements and sessions", db.role),
            format!("as a superuser: GRANT pg_monitor TO {};", db.role),
        )
    }
}

/// The listing of the log directory.
pub fn check_log_dir(probe: &LogDirProbe) -> Finding {
    const NAME: &str = "log directory";
    match probe {
        LogDirProbe::Unknown => Finding::fail(
            NAME,
            "unknown: not in the config, and the server's data_directory is not readable",
            "in the agent's config: [logs] directory = \"…\" (the server's log_directory), or --log-directory",
        ),
        LogDirProbe::Unreadable { dir, error, missing: true, .. } => Finding::fail(
            NAME,
            format!("{}: {error}", dir.display()),
            "set [logs] directory (or --log-directory) to the server's log_directory \
             (SHOW log_directory; relative to SHOW data_directory)",
        ),
        LogDirProbe::Unreadable { dir, error, missing: false, .. } => Finding::fail(
            NAME,
            format!("{}: {error}", dir.display()),
            format!(
                "let the agent's user read it: postgresql.conf: log_file_mode = 0640, and add the user to the \
                 server's group (usermod -aG postgres <agent user>); every parent of {} needs +x",
                dir.display()
            ),
        ),
        LogDirProbe::Listed { dir, pattern, matching: 0, .. } => Finding::fail(
            NAME,
            format!("{}: no file matches {pattern:?}", dir.display()),
            "set [logs] pattern to match the server's log_filename (e.g. \"postgresql-*\"), or check log_directory",
        ),
        LogDirProbe::Listed { dir, pattern, matching, readable: 0 } => Finding::fail(
            NAME,
            format!("{}: {matching} file(s) match {pattern:?}, none can be opened", dir.display()),
            "postgresql.conf: log_file_mode = 0640, and add the agent's user to the server's group \
             (usermod -aG postgres <agent user>)",
        ),
        LogDirProbe::Listed { dir, pattern, matching, readable } => Finding::ok(
            NAME,
            format!("{}: {readable} of {matching} file(s) matching {pattern:?} readable", dir.display()),
        ),
    }
}

/// The collector endpoint accepts TCP connections.
pub fn check_endpoint(probe: &EndpointProbe) -> Finding {
    const NAME: &str = "collector";
    match probe {
        EndpointProbe::Reachable { endpoint, addr } => {
            Finding::ok(NAME, format!("{endpoint} accepts connections ({addr})"))
        }
        EndpointProbe::Unreachable { endpoint, error } => Finding::fail(
            NAME,
            format!("{endpoint} unreachable: {error}"),
            "start the collector, or point [export] endpoint / --endpoint / OTEL_EXPORTER_OTLP_ENDPOINT at it",
        ),
    }
}

/// Every finding, in report order. Database checks FAIL together when the
/// database could not be read; the others run anyway.
pub fn evaluate(config: &Config, facts: &Facts) -> Vec<Finding> {
    let format = config.logs.as_ref().and_then(|l| l.format);
    let prefix = config.logs.as_ref().and_then(|l| l.prefix.as_ref()).map(Prefix::as_str);
    let mut out = Vec::new();
    match &facts.database {
        // Logs alone are a valid set-up: the agent does its job without
        // the statistics source, so this warns (and says what is missed).
        Err(_) if config.database.is_none() => out.push(Finding::warn(
            "database",
            "no [database] dsn: the agent runs on the log source alone (no pg_stat_statements, table or \
             activity statistics) and the server's settings are not checked",
            "set [database] dsn (or --dsn, QUERYWATCH_DSN) to a role with pg_monitor",
        )),
        Err(e) => out.push(Finding::fail(
            "database",
            format!("cannot read the server's settings: {e}"),
            "set [database] dsn (or --dsn, QUERYWATCH_DSN) to a reachable server and a role that may log in",
        )),
        Ok(db) => {
            let s = &db.settings;
            out.push(Finding::ok("database", format!("connected to {} as {}", db.database, db.role)));
            out.push(check_min_duration(s));
            out.push(check_preload(s));
            out.push(check_pgss_extension(db));
            out.extend(check_prefix(s, format, prefix));
            out.extend(check_destination(s, format));
            out.push(check_query_id(s));
            out.push(check_lc_messages(s));
            out.push(check_pg_monitor(db));
        }
    }
    out.push(check_log_dir(&facts.log_dir));
    out.push(check_endpoint(&facts.endpoint));
    out
}

/// Where the logs are and which files are the server's: the config's
/// `[logs] directory` and pattern, else the server's `log_directory`
/// (relative to `data_directory`) with a pattern made from `log_filename`.
pub fn log_target(config: &Config, settings: Option<&Settings>) -> Option<(PathBuf, glob::Pattern)> {
    if let Some(logs) = &config.logs
        && let Some(dir) = &logs.directory
    {
        return Some((dir.clone(), logs.pattern.clone()));
    }
    let s = settings?;
    let dir = PathBuf::from(setting(s, "log_directory")?);
    let dir = if dir.is_absolute() { dir } else { Path::new(setting(s, "data_directory")?).join(dir) };
    let pattern = filename_pattern(setting(s, "log_filename").unwrap_or("postgresql-%Y-%m-%d_%H%M%S.log"))?;
    Some((dir, pattern))
}

/// `log_filename` (strftime escapes) as a glob: every escape becomes `*`,
/// and the extension too (csvlog/jsonlog replace `.log` by `.csv`/`.json`).
fn filename_pattern(log_filename: &str) -> Option<glob::Pattern> {
    let mut out = String::new();
    let mut chars = log_filename.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            chars.next();
            if !out.ends_with('*') {
                out.push('*');
            }
        } else {
            out.push_str(&glob::Pattern::escape(&c.to_string()));
        }
    }
    if let Some(stem) = out.strip_suffix(".log") {
        out = format!("{stem}.*");
    }
    glob::Pattern::new(&out).ok()
}

/// Lists `dir` and tries to open the files matching `pattern`.
pub fn probe_log_dir(target: Option<(PathBuf, glob::Pattern)>) -> LogDirProbe {
    let Some((dir, pattern)) = target else { return LogDirProbe::Unknown };
    let pattern_s = pattern.as_str().to_owned();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            let missing = e.kind() == std::io::ErrorKind::NotFound;
            return LogDirProbe::Unreadable { dir, pattern: pattern_s, error: e.to_string(), missing };
        }
    };
    let (mut matching, mut readable) = (0, 0);
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| pattern.matches(n)) || !entry.path().is_file() {
            continue;
        }
        matching += 1;
        if std::fs::File::open(entry.path()).is_ok() {
            readable += 1;
        }
    }
    LogDirProbe::Listed { dir, pattern: pattern_s, matching, readable }
}

/// `http(s)://host:port/…` → `(host, port)`, with the scheme's default port.
pub fn endpoint_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if scheme == "https" { 443 } else { 80 };
    // [v6]:port, host:port, host
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), default)),
        None => None,
    }
}

/// A TCP connection to the endpoint's host:port (any resolved address).
/// Blocking: run it off the async runtime.
pub fn probe_endpoint(endpoint: &str, timeout: Duration) -> EndpointProbe {
    let unreachable = |error: String| EndpointProbe::Unreachable { endpoint: endpoint.to_owned(), error };
    let Some((host, port)) = endpoint_host_port(endpoint) else {
        return unreachable("cannot tell host and port from it".to_owned());
    };
    let addrs = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return unreachable(format!("cannot resolve {host}: {e}")),
    };
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return EndpointProbe::Reachable { endpoint: endpoint.to_owned(), addr },
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    unreachable(last)
}

/// Reads what the checks need from the server.
async fn read_database(dsn: &str) -> Result<DbFacts, String> {
    let (client, connection) =
        tokio_postgres::connect(dsn, tokio_postgres::NoTls).await.map_err(|e| error_chain(&e))?;
    let conn = tokio::spawn(connection);
    let result = async {
        let rows = client
            .query("SELECT /* querywatch */ name::text, setting::text FROM pg_settings", &[])
            .await
            .map_err(|e| format!("reading pg_settings: {}", error_chain(&e)))?;
        let settings =
            rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1).unwrap_or_default())).collect();
        let row = client
            .query_one(
                "SELECT /* querywatch */ quote_ident(current_database())::text, quote_ident(current_user)::text, \
                 pg_has_role(current_user, 'pg_monitor', 'USAGE'), \
                 EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
                &[],
            )
            .await
            .map_err(|e| format!("reading the role and extensions: {}", error_chain(&e)))?;
        Ok(DbFacts {
            settings,
            database: row.get(0),
            role: row.get(1),
            pg_monitor: row.get(2),
            pgss_installed: row.get(3),
        })
    }
    .await;
    drop(client);
    // The connection task ends once the client is gone.
    let _ = conn.await;
    result
}

/// Collects the [`Facts`]: the database (with `dsn`, else the config's),
/// then the log directory (which may come from the server's settings),
/// then the collector.
pub async fn gather(config: &Config) -> Facts {
    let database = match config.database.as_ref().map(|d| d.dsn.clone()) {
        None => Err("no DSN configured".to_owned()),
        Some(dsn) => match tokio::time::timeout(DATABASE_TIMEOUT, read_database(&dsn)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {DATABASE_TIMEOUT:?}")),
        },
    };
    let target = log_target(config, database.as_ref().ok().map(|d| &d.settings));
    let endpoint = config.export.endpoint.clone();
    let probes =
        tokio::task::spawn_blocking(move || (probe_log_dir(target), probe_endpoint(&endpoint, ENDPOINT_TIMEOUT))).await;
    let (log_dir, endpoint) = match probes {
        Ok(p) => p,
        Err(e) => (
            LogDirProbe::Unknown,
            EndpointProbe::Unreachable {
                endpoint: config.export.endpoint.clone(),
                error: format!("probe failed: {e}"),
            },
        ),
    };
    Facts { database, log_dir, endpoint }
}

/// Gathers and evaluates.
pub async fn run(config: &Config) -> Vec<Finding> {
    let facts = gather(config).await;
    evaluate(config, &facts)
}

/// [`run`] on a runtime of its own, for the binary (which has no tokio of
/// its own). Errs only when the runtime cannot be built.
pub fn run_blocking(config: &Config) -> std::io::Result<Vec<Finding>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(run(config)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Env, Overrides, RawConfig};

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The fixture workload's settings: everything right.
    fn good() -> Settings {
        settings(&[
            ("log_min_duration_statement", "0"),
            ("shared_preload_libraries", "pg_stat_statements,auto_explain"),
            ("log_line_prefix", "%m [%p] %q%u@%d "),
            ("log_destination", "stderr,csvlog"),
            ("logging_collector", "on"),
            ("compute_query_id", "auto"),
            ("lc_messages", "C"),
        ])
    }

    fn with(mut s: Settings, name: &str, value: &str) -> Settings {
        s.insert(name.to_owned(), value.to_owned());
        s
    }

    fn db(s: Settings) -> DbFacts {
        DbFacts {
            settings: s,
            database: "postgres".into(),
            role: "querywatch".into(),
            pg_monitor: true,
            pgss_installed: true,
        }
    }

    fn config(toml_text: &str) -> Config {
        let raw: RawConfig = toml::from_str(toml_text).unwrap();
        Config::resolve(raw, &Env::default(), &Overrides::default()).unwrap()
    }

    #[test]
    fn min_duration() {
        let f = check_min_duration(&with(good(), "log_min_duration_statement", "-1"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("ALTER SYSTEM SET log_min_duration_statement = 0"));
        let f = check_min_duration(&with(good(), "log_min_duration_statement", "250"));
        assert_eq!(f.status, Status::Warn);
        assert!(f.message.contains("slower than 250 ms"), "{f}");
        assert_eq!(check_min_duration(&good()).status, Status::Ok);
        assert_eq!(check_min_duration(&Settings::new()).status, Status::Fail);
    }

    #[test]
    fn preload_keeps_other_libraries_in_the_fix() {
        assert_eq!(check_preload(&good()).status, Status::Ok);
        let f = check_preload(&with(good(), "shared_preload_libraries", "auto_explain"));
        assert_eq!(f.status, Status::Fail);
        assert_eq!(
            f.fix.as_deref(),
            Some(
                "postgresql.conf: shared_preload_libraries = 'auto_explain,pg_stat_statements' (then restart PostgreSQL)"
            )
        );
        let f = check_preload(&with(good(), "shared_preload_libraries", ""));
        assert!(f.fix.unwrap().contains("shared_preload_libraries = 'pg_stat_statements'"));
    }

    #[test]
    fn extension_and_pg_monitor() {
        assert_eq!(check_pgss_extension(&db(good())).status, Status::Ok);
        let f = check_pgss_extension(&DbFacts { pgss_installed: false, ..db(good()) });
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"));
        assert_eq!(check_pg_monitor(&db(good())).status, Status::Ok);
        let f = check_pg_monitor(&DbFacts { pg_monitor: false, role: "\"Qw\"".into(), ..db(good()) });
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.fix.as_deref(), Some("as a superuser: GRANT pg_monitor TO \"Qw\";"));
    }

    #[test]
    fn prefix_without_session_or_time_warns_with_a_fixed_prefix() {
        let all = check_prefix(&good(), None, None);
        assert!(all.iter().all(|f| f.status == Status::Ok), "{all:?}");

        let f = check_prefix(&with(good(), "log_line_prefix", "%t "), None, None);
        assert_eq!(f[0].status, Status::Warn);
        assert!(f[0].message.contains("no %p or %c"));
        assert!(f[0].fix.as_deref().unwrap().contains("log_line_prefix = '[%p] %t '"), "{:?}", f[0]);

        let f = check_prefix(&with(good(), "log_line_prefix", "[%p] "), None, None);
        assert_eq!(f[0].status, Status::Warn);
        assert!(f[0].message.contains("no %m, %t or %n"));
        assert!(f[0].fix.as_deref().unwrap().contains("'%m [%p] '"));

        let f = check_prefix(&with(good(), "log_line_prefix", ""), None, None);
        assert_eq!(f.iter().filter(|f| f.status == Status::Warn).count(), 2);

        // %c pairs sessions, %n times them.
        let f = check_prefix(&with(good(), "log_line_prefix", "%n %c "), None, None);
        assert_eq!(f[0].status, Status::Ok);
    }

    #[test]
    fn configured_prefix_must_equal_the_servers() {
        let f = check_prefix(&good(), Some(LogFormat::Stderr), Some("%m [%p] %q%u@%d "));
        assert_eq!(f[1].status, Status::Ok);
        let f = check_prefix(&good(), Some(LogFormat::Stderr), Some("%m [%p] "));
        assert_eq!(f[1].status, Status::Fail);
        assert_eq!(f[1].fix.as_deref(), Some("in the agent's config: [logs] prefix = \"%m [%p] %q%u@%d \""));
        // csvlog carries every field: the prefix does not matter.
        let f = check_prefix(&good(), Some(LogFormat::Csv), Some("%m [%p] "));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Ok);
    }

    #[test]
    fn destination_must_include_the_configured_format() {
        assert!(check_destination(&good(), Some(LogFormat::Csv)).iter().all(|f| f.status == Status::Ok));
        let f = check_destination(&good(), Some(LogFormat::Json));
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].fix.as_deref().unwrap().contains("log_destination = 'stderr,csvlog,jsonlog'"));
        let f = check_destination(&with(good(), "log_destination", "syslog"), None);
        assert_eq!(f[0].status, Status::Fail);
        assert_eq!(check_destination(&good(), None)[0].status, Status::Ok);
        let f = check_destination(&with(good(), "logging_collector", "off"), None);
        assert_eq!(f[1].status, Status::Warn);
        assert!(f[1].fix.as_deref().unwrap().contains("logging_collector = on"));
    }

    #[test]
    fn query_id() {
        assert_eq!(check_query_id(&good()).status, Status::Ok);
        assert_eq!(check_query_id(&with(good(), "compute_query_id", "on")).status, Status::Ok);
        let f = check_query_id(&with(good(), "compute_query_id", "off"));
        assert_eq!(f.status, Status::Warn);
        assert!(f.fix.unwrap().contains("compute_query_id = on"));
        // auto without pg_stat_statements is off.
        let s = with(good(), "shared_preload_libraries", "");
        assert_eq!(check_query_id(&s).status, Status::Warn);
        let mut s = good();
        s.remove("compute_query_id");
        assert_eq!(check_query_id(&s).status, Status::Ok);
    }

    #[test]
    fn lc_messages() {
        for ok in ["C", "POSIX", "C.UTF-8", "en_US.UTF-8", "en_GB.utf8"] {
            assert_eq!(check_lc_messages(&with(good(), "lc_messages", ok)).status, Status::Ok, "{ok}");
        }
        let f = check_lc_messages(&with(good(), "lc_messages", "de_DE.UTF-8"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("lc_messages = 'C'"));
        assert_eq!(check_lc_messages(&with(good(), "lc_messages", "")).status, Status::Warn);
    }

    #[test]
    fn log_dir_probes() {
        assert_eq!(check_log_dir(&LogDirProbe::Unknown).status, Status::Fail);
        let dir = PathBuf::from("/var/log/postgresql");
        let unreadable = |missing| LogDirProbe::Unreadable {
            dir: dir.clone(),
            pattern: "p*".into(),
            error: "Permission denied".into(),
            missing,
        };
        assert!(check_log_dir(&unreadable(false)).fix.unwrap().contains("log_file_mode = 0640"));
        assert!(check_log_dir(&unreadable(true)).fix.unwrap().contains("SHOW log_directory"));
        let listed =
            |matching, readable| LogDirProbe::Listed { dir: dir.clone(), pattern: "p*".into(), matching, readable };
        assert_eq!(check_log_dir(&listed(0, 0)).status, Status::Fail);
        assert_eq!(check_log_dir(&listed(2, 0)).status, Status::Fail);
        assert_eq!(check_log_dir(&listed(2, 1)).status, Status::Ok);
    }

    #[test]
    fn log_dir_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let pattern = glob::Pattern::new("postgresql-*").unwrap();
        let probe = probe_log_dir(Some((tmp.path().to_owned(), pattern.clone())));
        assert!(matches!(probe, LogDirProbe::Listed { matching: 0, .. }), "{probe:?}");
        std::fs::write(tmp.path().join("postgresql-1.log"), "x").unwrap();
        std::fs::write(tmp.path().join("other.log"), "x").unwrap();
        let probe = probe_log_dir(Some((tmp.path().to_owned(), pattern.clone())));
        assert!(matches!(probe, LogDirProbe::Listed { matching: 1, readable: 1, .. }), "{probe:?}");
        let probe = probe_log_dir(Some((tmp.path().join("missing"), pattern)));
        assert!(matches!(probe, LogDirProbe::Unreadable { .. }), "{probe:?}");
    }

    #[test]
    fn log_target_from_config_else_from_the_server() {
        let c = config("node = \"n\"\n[logs]\ndirectory = \"/logs\"\npattern = \"pg-*\"");
        let (dir, pattern) = log_target(&c, None).unwrap();
        assert_eq!((dir.as_path(), pattern.as_str()), (Path::new("/logs"), "pg-*"));

        let c = config("node = \"n\"\n[database]\ndsn = \"host=x\"");
        assert!(log_target(&c, None).is_none());
        let s =
            settings(&[("log_directory", "log"), ("data_directory", "/data"), ("log_filename", "postgresql-%a.log")]);
        let (dir, pattern) = log_target(&c, Some(&s)).unwrap();
        assert_eq!(dir, Path::new("/data/log"));
        assert!(pattern.matches("postgresql-Mon.log") && pattern.matches("postgresql-Mon.csv"), "{pattern}");
        // Without pg_read_all_settings data_directory is hidden.
        let s = settings(&[("log_directory", "log")]);
        assert!(log_target(&c, Some(&s)).is_none());
        let s = settings(&[("log_directory", "/var/log/pg")]);
        assert_eq!(log_target(&c, Some(&s)).unwrap().0, Path::new("/var/log/pg"));
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_host_port("http://collector:4317"), Some(("collector".into(), 4317)));
        assert_eq!(endpoint_host_port("https://c.example/v1"), Some(("c.example".into(), 443)));
        assert_eq!(endpoint_host_port("http://[::1]:4318/"), Some(("::1".into(), 4318)));
        assert_eq!(endpoint_host_port("http://"), None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let probe = probe_endpoint(&url, ENDPOINT_TIMEOUT);
        assert!(matches!(probe, EndpointProbe::Reachable { .. }), "{probe:?}");
        assert_eq!(check_endpoint(&probe).status, Status::Ok);
        drop(listener);
        let probe = probe_endpoint(&url, ENDPOINT_TIMEOUT);
        assert_eq!(check_endpoint(&probe).status, Status::Fail, "{probe:?}");
    }

    #[test]
    fn unreachable_database_fails_the_database_checks_only() {
        let c = config("node = \"n\"\n[logs]\ndirectory = \"/logs\"\n[database]\ndsn = \"host=db\"");
        let facts = Facts {
            database: Err("connection refused".into()),
            log_dir: LogDirProbe::Listed { dir: "/logs".into(), pattern: "p*".into(), matching: 1, readable: 1 },
            endpoint: EndpointProbe::Reachable {
                endpoint: "http://c:4317".into(),
                addr: "127.0.0.1:4317".parse().unwrap(),
            },
        };
        let f = evaluate(&c, &facts);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[1..].iter().all(|f| f.status == Status::Ok));
        assert!(!passed(&f));

        // Without a DSN at all, logs alone: a warning, and the check passes.
        let logs_only = config("node = \"n\"\n[logs]\ndirectory = \"/logs\"");
        let f = evaluate(&logs_only, &facts);
        assert_eq!(f[0].status, Status::Warn, "{f:?}");
        assert!(passed(&f), "{f:?}");

        let facts = Facts { database: Ok(db(good())), ..facts };
        let f = evaluate(&c, &facts);
        assert!(passed(&f), "{f:?}");
        let facts = Facts { database: Ok(db(with(good(), "log_min_duration_statement", "100"))), ..facts };
        let f = evaluate(&c, &facts);
        assert!(passed(&f) && f.iter().any(|f| f.status == Status::Warn));
    }

    #[test]
    fn display() {
        let f = Finding::fail("x", "bad", "do y");
        assert_eq!(f.to_string(), "FAIL x: bad\n     fix: do y");
        assert_eq!(Finding::ok("x", "fine").to_string(), "ok   x: fine");
    }
}
