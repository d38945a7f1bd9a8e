//! Running the real `querywatch agent` against a real PostgreSQL: an
//! OTLP/gRPC receiver built from `opentelemetry-proto`'s tonic server (that
//! can be taken down and brought back on the same port), the agent's
//! config, starting and stopping the binary, and waiting on what arrives.
//! Shared by `agent_live` and `agent_faults`.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use querywatch_wire::Observations;
use tonic::codec::CompressionEncoding;

use super::cluster::{PgCluster, workload_dir};
use super::report::{Input, Key, QueryRow, Report};
use super::workload::pgss_dump_sql;

/// The `querywatch.node` every test agent reports.
pub const NODE: &str = "live-1";

/// Every request as it arrived, re-encoded (gzip is transport only, so
/// these are the bytes of the messages the agent sent).
#[derive(Default)]
struct Seen {
    metrics: Mutex<Vec<Vec<u8>>>,
    logs: Mutex<Vec<Vec<u8>>>,
    /// Going down: refuse with UNAVAILABLE instead of recording.
    refusing: AtomicBool,
    /// Requests inside a handler.
    in_flight: AtomicUsize,
}

impl Seen {
    /// Records `bytes` in `into` unless refusing. The in-flight count covers
    /// the check and the push, so [`Receiver::down`] can wait for a request
    /// that was accepted to be answered.
    fn record(&self, into: &Mutex<Vec<Vec<u8>>>, bytes: Vec<u8>) -> Result<(), tonic::Status> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if self.refusing.load(Ordering::SeqCst) {
            Err(tonic::Status::unavailable("the test collector is down"))
        } else {
            into.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(bytes);
            Ok(())
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[derive(Clone)]
struct Sink(Arc<Seen>);

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.record(&self.0.metrics, request.into_inner().encode_to_vec())?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.record(&self.0.logs, request.into_inner().encode_to_vec())?;
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1, on a runtime of its own; stops
/// when dropped.
pub struct Receiver {
    /// `None` while down.
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Receiver {
    /// Listens on a free port.
    pub fn start() -> Receiver {
        let mut r = Receiver { rt: None, addr: SocketAddr::from(([127, 0, 0, 1], 0)), seen: Arc::default() };
        r.serve();
        r
    }

    /// Binds `self.addr` (port 0 the first time) and serves on a new runtime.
    fn serve(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the receiver");
        // Coming back on the same port: the old listener is closed, but
        // give the kernel a moment should it still hold the address.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match rt.block_on(tokio::net::TcpListener::bind(self.addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("receiver: binding {} again: {e}; retrying", self.addr);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("receiver: cannot bind {}: {e}", self.addr),
            }
        };
        self.addr = listener.local_addr().expect("a bound socket's address");
        self.seen.refusing.store(false, Ordering::SeqCst);
        let sink = Sink(self.seen.clone());
        let metrics = MetricsServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip);
        let logs = LogsServiceServer::new(sink).accept_compressed(CompressionEncoding::Gzip);
        rt.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(metrics)
                .add_service(logs)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
            if let Err(e) = served {
                eprintln!("receiver: server error: {e}");
            }
        });
        self.rt = Some(rt);
    }

    /// Takes the receiver down: the listener and every connection close, so
    /// the agent sees connection errors until [`Receiver::up`].
    ///
    /// A request recorded just before must still get its answer, or the
    /// agent would send it again (at-least-once) and the test would see a
    /// duplicate the scenario did not cause: refuse new requests first,
    /// wait until no handler runs, and give the last answer time to leave.
    pub fn down(&mut self) {
        self.seen.refusing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.seen.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(200));
        if let Some(rt) = self.rt.take() {
            // Dropping the runtime cancels the server and its connection
            // tasks: every socket closes.
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Brings the receiver back on the same address.
    pub fn up(&mut self) {
        assert!(self.rt.is_none(), "the receiver is already up");
        self.serve();
    }

    /// Each metrics request received so far, decoded, in arrival order.
    pub fn requests(&self) -> Vec<Observations> {
        let seen = self.seen.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for bytes in seen.iter() {
            let req = ExportMetricsServiceRequest::decode(&bytes[..]).expect("a metrics request");
            let decoded = querywatch_wire::otlp::decode_metrics(&req).expect("the agent's metrics decode");
            for (resource, obs) in decoded.batches {
                assert_eq!(resource.node, NODE, "resource of a batch");
                out.push(obs);
            }
        }
        out
    }

    /// Everything received so far, decoded and merged in arrival order.
    pub fn observations(&self) -> Observations {
        let mut all = Observations::default();
        for obs in self.requests() {
            all.merge(obs);
        }
        all
    }

    pub fn all_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let metrics = self.seen.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let logs = self.seen.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for b in metrics.iter().chain(logs.iter()) {
            out.extend_from_slice(b);
        }
        out
    }
}

/// The fingerprint the collector groups statements by.
pub fn fingerprint(text: &str) -> String {
    querywatch_collector::fingerprint::fingerprint(text).to_string()
}

/// The merged observations as the report rows `support::compare` reads,
/// grouped by (fingerprint, database, user) as the collector groups them.
pub fn report_of(obs: &Observations) -> Report {
    let mut rows: BTreeMap<Key, QueryRow> = BTreeMap::new();
    for (key, s) in &obs.statements {
        let fp = fingerprint(&key.text);
        let k = Key { fingerprint: fp.clone(), database: key.database.clone(), user: key.user.clone() };
        let row = rows.entry(k).or_insert_with(|| QueryRow {
            fingerprint: fp,
            query: key.text.clone(),
            database: Some(key.database.clone()),
            user: Some(key.user.clone()),
            calls: 0,
            total_ms: 0.0,
            mean_ms: None,
            min_ms: None,
            max_ms: None,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            errors: serde_json::json!({}),
        });
        row.calls += s.calls;
        row.total_ms += s.total.as_secs_f64() * 1e3;
        let errors = row.errors.as_object_mut().expect("errors is an object");
        for (state, e) in &s.errors {
            let n = errors.get(state).and_then(serde_json::Value::as_u64).unwrap_or(0) + e.count;
            errors.insert(state.clone(), n.into());
        }
    }
    Report {
        queries: rows.into_values().collect(),
        findings: Vec::new(),
        input: Input {
            files: obs.input.files,
            bytes: obs.input.bytes,
            lines: obs.input.lines,
            entries: obs.input.entries,
            unparsed: obs.input.unparsed,
        },
    }
}

pub fn start_agent(config: &Path, stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_querywatch"))
        .args(["agent", "--config"])
        .arg(config)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("QUERYWATCH_DSN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr).expect("creating the agent's stderr file"))
        .spawn()
        .expect("starting querywatch agent")
}

/// Waits for `child` until `deadline`; kills it (and fails) past it.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str, stderr: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the agent") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the agent did not exit within {within:?}; stderr:\n{}", read(stderr));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the agent must exit 0 within 20 s; returns its stderr.
pub fn stop_agent(agent: &mut Child, stderr: &Path) -> String {
    let status = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("running kill");
    assert!(status.success(), "kill -TERM failed");
    let status = wait_exit(agent, Duration::from_secs(20), "SIGTERM", stderr);
    let err = read(stderr);
    assert!(status.success(), "the agent exited with {status} after SIGTERM; stderr:\n{err}");
    err
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// What the agent reads and where it sends, for [`write_agent_config`].
pub struct AgentSetup<'a> {
    /// The log directory and the file-name glob (one log format of the
    /// several a workload cluster writes, or every statement would count
    /// several times); `None`: no log source.
    pub logs: Option<(PathBuf, &'a str)>,
    /// `[database] dsn`; `None`: no statistics source.
    pub dsn: Option<String>,
    pub receiver: &'a Receiver,
}

/// Writes the agent's config into `dir` (interval 1 s, logs read from the
/// beginning, statistics every second); returns (config path, state dir).
pub fn write_agent_config(dir: &Path, setup: &AgentSetup<'_>) -> (PathBuf, PathBuf) {
    let state_dir = dir.join("state");
    let config = dir.join("agent.toml");
    let mut text = format!(
        "node = \"{NODE}\"\ncluster = \"it\"\ninterval = \"1s\"\nstate_dir = {state:?}\n",
        state = state_dir.display().to_string()
    );
    if let Some((log_dir, pattern)) = &setup.logs {
        text.push_str(&format!(
            "[logs]\ndirectory = {dir:?}\npattern = {pattern:?}\nstart_at = \"beginning\"\n",
            dir = log_dir.display().to_string()
        ));
    }
    if let Some(dsn) = &setup.dsn {
        text.push_str(&format!(
            "[database]\ndsn = {dsn:?}\nstatements_interval = \"1s\"\nactivity_interval = \"200ms\"\n"
        ));
    }
    text.push_str(&format!("[export]\nendpoint = \"http://{}\"\n", setup.receiver.addr));
    fs::write(&config, text).expect("writing the agent's config");
    (config, state_dir)
}

/// Writes the agent's config for `cluster`'s csvlog (`postgresql.csv`) and
/// `receiver` into `dir`; returns (config path, state dir).
pub fn write_config(dir: &Path, cluster: &PgCluster, receiver: &Receiver) -> (PathBuf, PathBuf) {
    write_agent_config(dir, &AgentSetup { logs: Some((cluster.log_dir(), "postgresql.csv")), dsn: None, receiver })
}

/// Polls `cond` on what the receiver has merged until it holds, for at most
/// `within`; fails with `what`, the last value's description and the
/// agent's stderr when it does not (or when the agent exits).
pub fn wait_for<T: std::fmt::Debug>(
    receiver: &Receiver,
    agent: &mut Child,
    stderr: &Path,
    within: Duration,
    what: &str,
    mut probe: impl FnMut(&Observations) -> Option<T>,
) -> (T, Observations) {
    let deadline = Instant::now() + within;
    loop {
        let obs = receiver.observations();
        if let Some(v) = probe(&obs) {
            return (v, obs);
        }
        assert!(
            agent.try_wait().expect("waiting for the agent").is_none(),
            "{what}: the agent exited early; stderr:\n{}",
            read(stderr)
        );
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; agent stderr:\n{}", read(stderr));
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the receiver has seen the pg_stat_statements dump, the
/// workload's last statement: once the agent has exported it, it has
/// exported everything before it (one stream of files, read in order).
pub fn wait_for_dump(receiver: &Receiver, agent: &mut Child, stderr: &Path) -> Observations {
    let dump_fp = super::pgss::fingerprint_of(&pgss_dump_sql());
    let seen = |obs: &Observations| {
        obs.statements.iter().any(|(k, s)| s.calls > 0 && fingerprint(&k.text) == dump_fp).then_some(())
    };
    wait_for(receiver, agent, stderr, Duration::from_secs(60), "the workload's last statement", seen).1
}

/// Dumps pg_stat_statements after checking nothing was evicted.
pub fn pgss_dump(cluster: &PgCluster) -> String {
    let dealloc = cluster.psql("SELECT dealloc FROM pg_stat_statements_info");
    assert_eq!(dealloc.trim(), "0", "pg_stat_statements evicted entries");
    cluster.psql_in("postgres", "postgres", &["-f", &workload_dir().join("pgss-dump.sql").to_string_lossy()])
}

/// The agent's connection string for `cluster`: the least-privileged role
/// `querywatch` (create it with [`create_agent_role`]).
pub fn agent_dsn(cluster: &PgCluster) -> String {
    format!("host={} port={} user=querywatch dbname=postgres connect_timeout=5", cluster.host(), cluster.port())
}

/// pg_stat_statements in `postgres`, and the agent's role with `pg_monitor`.
pub fn create_agent_role(cluster: &PgCluster) {
    cluster.psql_in(
        "postgres",
        "postgres",
        &[
            "-c",
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            "-c",
            "CREATE ROLE querywatch LOGIN; GRANT pg_monitor TO querywatch",
        ],
    );
}

/// How often the agent's poller has read pg_stat_statements so far, from
/// pg_stat_statements itself (its statements are marked, and never
/// reported by the agent, but the server counts them).
pub fn poller_polls(cluster: &PgCluster) -> u64 {
    let polls = cluster.psql(
        "SELECT coalesce(max(s.calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
         WHERE r.rolname = 'querywatch' AND s.query LIKE '%querywatch%' AND s.query LIKE '%pg_stat_statements%'",
    );
    polls.trim().parse().unwrap_or(0)
}

/// Waits until the poller has read pg_stat_statements `n` more times than
/// `since` (its first poll is a baseline: after two, what runs next is in a
/// delta).
pub fn wait_for_polls_since(cluster: &PgCluster, since: u64, n: u64, agent: &mut Child, stderr: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let polls = poller_polls(cluster);
        if polls >= since + n {
            return polls;
        }
        assert!(
            agent.try_wait().expect("waiting for the agent").is_none(),
            "the agent exited early; stderr:\n{}",
            read(stderr)
        );
        assert!(Instant::now() < deadline, "the poller did not poll {n} times within 60s; stderr:\n{}", read(stderr));
        thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_for_polls_since`] the start.
pub fn wait_for_polls(cluster: &PgCluster, n: u64, agent: &mut Child, stderr: &Path) -> u64 {
    wait_for_polls_since(cluster, 0, n, agent, stderr)
}
