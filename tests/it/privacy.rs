//! The privacy line as a test over captured bytes, on every path by which
//! something of the workload leaves the agent or the collector:
//!
//! - OTLP/gRPC: the raw client-to-server TCP stream through a proxy in
//!   front of a real collector, and the gRPC messages reassembled from its
//!   HTTP/2 DATA frames and inflated (the agent gzips);
//! - OTLP/HTTP protobuf: the raw TCP stream a capturing server received,
//!   and the request bodies inflated;
//! - the disk: every file under each agent's `state_dir` — the spool an
//!   agent whose collector is down writes, and the checkpoints;
//! - the collector's outputs: the JSON API (`/api/v1/*`, every statement's
//!   detail page) and `/metrics`.
//!
//! The agent does not send OTLP/JSON (it speaks gRPC or HTTP protobuf);
//! the collector *accepts* OTLP/JSON, so "HTTP JSON" here is the
//! collector's JSON API, what people and scripts read.
//!
//! The workload is the fixtures' (`tests/fixtures/workload`) plus canary
//! statements with distinctive literals in each place that can carry one:
//! a statement's text, an error's DETAIL (`Key (id)=(…)`), an auto_explain
//! plan's filter, a statement that is running while `pg_stat_activity`
//! is sampled. Three agents follow the same cluster's csvlog and poll its
//! statistics (as a `pg_monitor` role), each exporting one way.
//!
//! The check can fail: every literal looked for is first found in the
//! PostgreSQL log the agents read (it did reach them), every capture must
//! be non-empty and hold the masked shapes of the canaries (the data did
//! pass through, masked), and the search itself is tested on a capture
//! with a literal planted in it.

// A test: a failed unwrap is a failed test, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use querywatch_collector::fingerprint::fingerprint;
use querywatch_wire::names::OVERFLOW_TEXT;
use querywatch_wire::shape::Withheld;

use crate::agent_live::workload_literals;
use crate::support::agent::{NODE, read, start_agent, stop_agent};
use crate::support::{ClusterOptions, PgCluster, skip_pg};

/// Literals of the canary statements, each distinctive enough that it
/// cannot turn up in the bytes by chance.
const CANARY_TEXT: &str = "qwcanary-alpha-5b1e";
const CANARY_NUMBER: &str = "8675309421";
const CANARY_KEY: &str = "8675309777";
const CANARY_PLAN_TEXT: &str = "qwcanary-plan-31d4";
const CANARY_PLAN_NUMBER: &str = "8675309888";
const CANARY_SLEEP: &str = "qwcanary-sleep-77c2";
/// Only in an error's message: the application's RAISE builds it from two
/// halves, with a SQLSTATE of its choosing (not P0001).
const CANARY_RAISE: &str = "qwcanary-raise-9e2a";

/// Statements run after the workload, as the superuser; the last one's masked
/// shape tells that an agent has exported everything before it.
fn canary_statements() -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS canary (id bigint PRIMARY KEY, note text)".into(),
        format!("SELECT '{CANARY_TEXT}' AS canary_text, {CANARY_NUMBER} AS canary_number"),
        format!("INSERT INTO canary VALUES ({CANARY_KEY}, 'x')"),
        // A unique violation: the error's DETAIL quotes the key.
        format!("INSERT INTO canary VALUES ({CANARY_KEY}, 'y')"),
        // auto_explain logs the plan, whose Filter quotes both constants.
        format!("SELECT count(*) FROM canary WHERE id = {CANARY_PLAN_NUMBER} OR note = '{CANARY_PLAN_TEXT}'"),
        // The application's message, with its data, in an error's message.
        "DO $$ BEGIN RAISE EXCEPTION 'customer % has an unpaid invoice', concat('qwcanary-', 'raise-9e2a') \
         USING ERRCODE = '22023'; END $$"
            .into(),
        // Running for 1.5 s: pg_stat_activity shows it to the sampler.
        format!("SELECT pg_sleep(1.5) WHERE '{CANARY_SLEEP}' IS NOT NULL"),
        "SELECT 1 AS privacy_done".into(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// What one capture point saw, by connection, in arrival order.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

impl Capture {
    fn new_connection(&self) -> usize {
        let mut c = self.0.lock().unwrap();
        c.push(Vec::new());
        c.len() - 1
    }

    fn append(&self, conn: usize, bytes: &[u8]) {
        self.0.lock().unwrap()[conn].extend_from_slice(bytes);
    }

    fn connections(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// A TCP proxy to `upstream` that records what clients send.
fn proxy(upstream: SocketAddr) -> (SocketAddr, Capture) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = Capture::default();
    let cap = capture.clone();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(upstream) else { continue };
            let conn = cap.new_connection();
            let (mut client_r, mut server_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let cap = cap.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = client_r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    cap.append(conn, &buf[..n]);
                    if server_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_w.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, capture)
}

/// The gRPC messages a client sent on one HTTP/2 connection: DATA frames
/// reassembled per stream, length-prefixed messages split, compressed ones
/// inflated.
fn grpc_messages(stream: &[u8]) -> Vec<Vec<u8>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let Some(mut rest) = stream.strip_prefix(PREFACE) else { return Vec::new() };
    let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let Some(payload) = rest.get(9..9 + len) else { break };
        if kind == 0 {
            let mut p = payload;
            if flags & 0x8 != 0 {
                let pad = usize::from(p[0]);
                p = &p[1..p.len() - pad];
            }
            data.entry(id).or_default().extend_from_slice(p);
        }
        rest = &rest[9 + len..];
    }
    let mut out = Vec::new();
    for (_, mut d) in data {
        let mut d = &mut d[..];
        while d.len() >= 5 {
            let n = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
            let Some(msg) = d.get(5..5 + n) else { break };
            out.push(if d[0] == 1 { gunzip(msg) } else { msg.to_vec() });
            d = &mut d[5 + n..];
        }
    }
    out
}

/// One OTLP/HTTP request as it arrived.
struct HttpRequest {
    path: String,
    /// The body after `Content-Encoding` was undone.
    body: Vec<u8>,
}

/// An OTLP/HTTP server that records every request's raw bytes and
/// answers 200 with an empty (full success) protobuf response.
fn http_capture() -> (SocketAddr, Capture, Arc<Mutex<Vec<HttpRequest>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (capture, requests) = (Capture::default(), Arc::new(Mutex::new(Vec::new())));
    let (cap, reqs) = (capture.clone(), requests.clone());
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (cap, reqs) = (cap.clone(), reqs.clone());
            thread::spawn(move || {
                let id = cap.new_connection();
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    // The head.
                    let head_end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                cap.append(id, &buf[..n]);
                                pending.extend_from_slice(&buf[..n]);
                            }
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
                    };
                    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let gzipped = header("content-encoding").is_some_and(|v| v == "gzip");
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    while pending.len() < head_end + len {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                cap.append(id, &buf[..n]);
                                pending.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                    let raw = pending[head_end..head_end + len].to_vec();
                    pending.drain(..head_end + len);
                    let body = if gzipped { gunzip(&raw) } else { raw };
                    reqs.lock().unwrap().push(HttpRequest { path, body });
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, capture, requests)
}

/// GET over plain HTTP/1.1; the body.
fn http_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(t, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    t.read_to_end(&mut resp).unwrap();
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(resp.starts_with(b"HTTP/1.1 200"), "GET {path}: {}", String::from_utf8_lossy(&resp[..at]));
    let body = resp[at..].to_vec();
    // Chunked bodies (axum streams none of ours, but be sure): the
    // literals are searched for in the raw bytes either way.
    body
}

/// The statement texts in OTLP metrics requests (protobuf): from the
/// log, from pg_stat_statements, and (prefixed `activity: `) from the
/// `pg_stat_activity` samples.
fn statement_texts(requests: &[Vec<u8>]) -> Vec<String> {
    let mut texts = Vec::new();
    for bytes in requests {
        let Ok(req) = ExportMetricsServiceRequest::decode(&bytes[..]) else { continue };
        let Ok(decoded) = querywatch_wire::otlp::decode_metrics(&req) else { continue };
        for (_, obs) in decoded.batches {
            texts.extend(obs.statements.keys().map(|k| k.text.clone()));
            texts.extend(obs.db.statements.keys().map(|k| k.text.clone()));
            texts.extend(obs.db.activity.keys().map(|k| format!("activity: {}", k.text)));
        }
    }
    texts
}

/// Node name of the agent that withholds query text.
const WITHHELD_NODE: &str = "withheld-1";

/// The fingerprints of the log's statements in OTLP metrics requests, as
/// the collector computes them (a token gives the fingerprint it carries).
fn log_fingerprints(requests: &[Vec<u8>], cache: &mut HashMap<String, u64>) -> HashSet<u64> {
    let mut out = HashSet::new();
    for bytes in requests {
        let Ok(req) = ExportMetricsServiceRequest::decode(&bytes[..]) else { continue };
        let Ok(decoded) = querywatch_wire::otlp::decode_metrics(&req) else { continue };
        for (_, obs) in decoded.batches {
            for k in obs.statements.keys().filter(|k| k.text != OVERFLOW_TEXT) {
                out.insert(*cache.entry(k.text.clone()).or_insert_with(|| fingerprint(&k.text).0));
            }
        }
    }
    out
}

/// Writes an agent's config (logs and statistics of `cluster`, export to
/// `endpoint` over `protocol`); returns (config, state dir). The agent
/// named `withheld` sends fingerprints only, as node [`WITHHELD_NODE`].
fn agent_config(dir: &Path, name: &str, cluster: &PgCluster, endpoint: &str, protocol: &str) -> (PathBuf, PathBuf) {
    let state = dir.join(format!("state-{name}"));
    let config = dir.join(format!("agent-{name}.toml"));
    let (node, query_text) = if name == "withheld" { (WITHHELD_NODE, "fingerprint") } else { (NODE, "masked") };
    let text = format!(
        "node = \"{node}\"\ninterval = \"1s\"\nstate_dir = {state:?}\n\
         [logs]\ndirectory = {logs:?}\npattern = \"postgresql.csv\"\nstart_at = \"beginning\"\n\
         [database]\ndsn = \"host={host} port={port} user=querywatch dbname=postgres connect_timeout=5\"\n\
         statements_interval = \"1s\"\nactivity_interval = \"100ms\"\n\
         [export]\nendpoint = {endpoint:?}\nprotocol = {protocol:?}\ntimeout = \"2s\"\nquery_text = \"{query_text}\"\n",
        state = state.display().to_string(),
        logs = cluster.log_dir().display().to_string(),
        host = cluster.host(),
        port = cluster.port(),
    );
    fs::write(&config, text).unwrap();
    (config, state)
}

/// The metrics requests in the `.otlp` files of a spool directory (a spool
/// file: 12-byte header, then length-prefixed metrics and logs).
fn spooled_metrics(spool: &Path) -> Vec<Vec<u8>> {
    files_under(spool)
        .into_iter()
        .filter(|(p, b)| p.extension().is_some_and(|e| e == "otlp") && b.len() >= 16)
        .filter_map(|(_, b)| {
            let n = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
            b.get(16..16 + n).map(<[u8]>::to_vec)
        })
        .collect()
}

/// Every file under `dir`, with its path.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// The literals of `literals` found in `bytes`.
fn leaked<'a>(bytes: &[u8], literals: &'a [String]) -> Vec<&'a str> {
    literals.iter().filter(|l| contains(bytes, l.as_bytes())).map(String::as_str).collect()
}

#[test]
fn the_leak_search_finds_a_planted_literal() {
    let literals = vec![CANARY_TEXT.to_owned(), "other literal".to_owned()];
    let mut capture = b"\x0a\x13SELECT $1 AS canary_text\x12\x05".to_vec();
    assert!(leaked(&capture, &literals).is_empty());
    capture.extend_from_slice(CANARY_TEXT.as_bytes());
    assert_eq!(leaked(&capture, &literals), [CANARY_TEXT]);
    // And through the gRPC reassembly: a gzipped message split over two
    // DATA frames of one stream.
    let message = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&capture).unwrap();
        e.finish().unwrap()
    };
    let mut grpc = vec![1u8];
    grpc.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    grpc.extend_from_slice(&message);
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let (a, b) = grpc.split_at(grpc.len() / 2);
    for part in [a, b] {
        let len = part.len();
        h2.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0, 0, 0, 0, 0, 1]);
        h2.extend_from_slice(part);
    }
    let messages = grpc_messages(&h2);
    assert_eq!(messages.len(), 1);
    assert_eq!(leaked(&messages[0], &literals), [CANARY_TEXT]);
}

#[test]
fn no_workload_literal_leaves_by_any_export_path() {
    if skip_pg("no_workload_literal_leaves_by_any_export_path") {
        return;
    }
    let started = Instant::now();
    let cluster = PgCluster::start(&ClusterOptions::workload());
    // The role only: the workload's setup creates pg_stat_statements (and
    // fails if it exists); until then the pollers retry.
    cluster.psql("CREATE ROLE querywatch LOGIN; GRANT pg_monitor TO querywatch");
    let work = tempfile::tempdir().unwrap();

    // The real collector, in this process, behind the capturing proxy.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let raw: querywatch_collector::config::RawConfig = toml::from_str(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"off\"\n[http]\nlisten = \"127.0.0.1:0\"\n[detect]\ninterval = \"1s\"\nlog_findings = false\n",
    )
    .unwrap();
    let config =
        querywatch_collector::config::Config::resolve(raw, &querywatch_collector::config::Overrides::default())
            .unwrap();
    let collector = rt.block_on(querywatch_collector::serve::start(config)).unwrap();
    let (grpc_proxy, grpc_capture) = proxy(collector.grpc.unwrap());
    let (withheld_proxy, withheld_capture) = proxy(collector.grpc.unwrap());
    let (http_addr, http_capture, http_requests) = http_capture();
    // Nothing listens there: that agent spools.
    let down = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let agents: Vec<(&str, PathBuf, PathBuf, Child, PathBuf)> = [
        ("grpc", format!("http://{grpc_proxy}"), "grpc"),
        ("http", format!("http://{http_addr}"), "http/protobuf"),
        ("spool", format!("http://{down}"), "grpc"),
        ("withheld", format!("http://{withheld_proxy}"), "grpc"),
    ]
    .into_iter()
    .map(|(name, endpoint, protocol)| {
        let (config, state) = agent_config(work.path(), name, &cluster, &endpoint, protocol);
        let stderr = work.path().join(format!("agent-{name}.stderr"));
        let child = start_agent(&config, &stderr);
        (name, config, state, child, stderr)
    })
    .collect();
    let mut agents = agents;

    cluster.run_workload("full", Duration::from_secs(300));
    let mut args = Vec::new();
    for s in canary_statements() {
        args.push("-c".to_owned());
        args.push(s);
    }
    // One psql per statement would be slower; -c runs each in its own
    // transaction, and the unique violation does not stop the rest.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.client("psql").args(["-X", "-U", "postgres", "-d", "postgres"]).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duplicate key"), "the canaries did not run as planned: {err}");

    // Wait until the collector, the HTTP capture and the spool have the
    // last canary. (Stopping the spooling agent earlier and counting on its
    // last flush failed under load: a flush that outlasts the agent's grace
    // period leaves the batch in the log, not in the spool.)
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // The capture, not the collector's API: the collector groups by
        // pg_query fingerprint, which ignores column aliases, so the last
        // canary may be listed under another example text.
        let captured: Vec<Vec<u8>> = grpc_capture.connections().iter().flat_map(|c| grpc_messages(c)).collect();
        let via_grpc = statement_texts(&captured).iter().any(|t| t.contains("privacy_done"));
        let http_metrics: Vec<Vec<u8>> = http_requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with("/v1/metrics"))
            .map(|r| r.body.clone())
            .collect();
        let via_http = statement_texts(&http_metrics).iter().any(|t| t.contains("privacy_done"));
        let via_spool =
            statement_texts(&spooled_metrics(&agents[2].2.join("spool"))).iter().any(|t| t.contains("privacy_done"));
        if via_grpc && via_http && via_spool {
            break;
        }
        for (name, _, _, child, stderr) in agents.iter_mut() {
            assert!(child.try_wait().unwrap().is_none(), "agent {name} exited early:\n{}", read(stderr));
        }
        assert!(
            Instant::now() < deadline,
            "the last canary did not arrive within 90 s (gRPC: {via_grpc}, HTTP: {via_http}, spool: {via_spool}); \
             grpc agent:\n{}\nhttp agent:\n{}\nspool agent:\n{}",
            read(&agents[0].4),
            read(&agents[1].4),
            read(&agents[2].4)
        );
        thread::sleep(Duration::from_millis(250));
    }
    // The agent that withholds query text read the same log: wait until it
    // has sent every fingerprint the gRPC agent sent as text.
    let mut fp_cache = HashMap::new();
    let as_text: Vec<Vec<u8>> = grpc_capture.connections().iter().flat_map(|c| grpc_messages(c)).collect();
    let sent_as_text = log_fingerprints(&as_text, &mut fp_cache);
    assert!(sent_as_text.len() >= 10, "only {} fingerprints from the log", sent_as_text.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let withheld: Vec<Vec<u8>> = withheld_capture.connections().iter().flat_map(|c| grpc_messages(c)).collect();
        let missing = sent_as_text.difference(&log_fingerprints(&withheld, &mut fp_cache)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent withholding query text did not send {missing} of the {} fingerprints within 60 s:\n{}",
            sent_as_text.len(),
            read(&agents[3].4)
        );
        thread::sleep(Duration::from_millis(250));
    }
    // A few more statistics polls, then stop them all: the spooling agent
    // writes what it holds to its spool at SIGTERM.
    thread::sleep(Duration::from_secs(3));
    for (_, _, _, child, stderr) in agents.iter_mut() {
        stop_agent(child, stderr);
    }

    // What to look for: the workload's string literals and the canaries,
    // each of them in the log the agents read.
    // Only those in the log count: a literal the agents never saw proves
    // nothing by its absence. (The SQL files' quick literal scan also
    // yields a few fragments that are no literal at all, cut at a `--`
    // inside a string; the log does not have them.)
    let log = fs::read(cluster.log_dir().join("postgresql.csv")).unwrap();
    let scanned = workload_literals();
    let mut literals: Vec<String> = scanned.iter().filter(|l| contains(&log, l.as_bytes())).cloned().collect();
    assert!(
        literals.len() >= 10 && literals.len() * 10 >= scanned.len() * 8,
        "only {} of the workload's {} literals are in the log: {scanned:?}",
        literals.len(),
        scanned.len()
    );
    let workload_count = literals.len();
    let canaries =
        [CANARY_TEXT, CANARY_NUMBER, CANARY_KEY, CANARY_PLAN_TEXT, CANARY_PLAN_NUMBER, CANARY_SLEEP, CANARY_RAISE];
    for c in canaries {
        assert!(contains(&log, c.as_bytes()), "canary {c} is not in the log the agents read");
        literals.push(c.to_owned());
    }
    let log_text = String::from_utf8_lossy(&log);
    assert!(log_text.contains(&format!("Key (id)=({CANARY_KEY}) already exists")), "no DETAIL with the key");
    assert!(log_text.contains(CANARY_PLAN_NUMBER) && log_text.contains("Filter"), "no plan with the constants");
    assert!(log_text.contains(",22023,") && log_text.contains("at RAISE"), "no RAISE with its own SQLSTATE");

    let mut report = Vec::new();
    let mut check = |path: &str, bytes: &[u8]| {
        let found = leaked(bytes, &literals);
        assert!(found.is_empty(), "{path}: workload literals leaked: {found:?}");
        report.push(format!("{path}: {} bytes, none of {} literals", bytes.len(), literals.len()));
    };

    // gRPC: the raw stream and the messages in it.
    let conns = grpc_capture.connections();
    let raw: Vec<u8> = conns.concat();
    check("gRPC, raw TCP stream", &raw);
    let messages: Vec<Vec<u8>> = conns.iter().flat_map(|c| grpc_messages(c)).collect();
    check("gRPC, messages (inflated)", &messages.concat());
    let texts = statement_texts(&messages);
    assert!(texts.iter().any(|t| t.contains("$1 AS canary_text")), "masked canary not in the gRPC messages: {texts:?}");
    // The agents' own polls are in the log (log_min_duration_statement =
    // 0), and no agent reports them.
    assert!(contains(&log, b"/* querywatch */"), "the agents' polls are not in the log");
    let own: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("pg_stat_statements(true) s") || t.contains("quote_ident(n.nspname)"))
        .collect();
    assert!(own.is_empty(), "an agent reported its own statements: {own:?}");
    // The sleeping canary was sampled from pg_stat_activity while it ran.
    assert!(
        texts.iter().any(|t| t.starts_with("activity: ") && t.contains("pg_sleep")),
        "the running canary was not sampled from pg_stat_activity: {:?}",
        texts.iter().filter(|t| t.starts_with("activity: ")).collect::<Vec<_>>()
    );
    let logs = messages.iter().filter(|m| ExportLogsServiceRequest::decode(&m[..]).is_ok()).count();
    assert!(logs > 0, "no logs request (samples, errors, plans) among {} gRPC messages", messages.len());

    // HTTP: the raw stream and the bodies.
    check("OTLP/HTTP, raw TCP stream", &http_capture.connections().concat());
    let bodies: Vec<Vec<u8>> = http_requests.lock().unwrap().iter().map(|r| r.body.clone()).collect();
    check("OTLP/HTTP, bodies (inflated)", &bodies.concat());
    let texts = statement_texts(&bodies);
    assert!(texts.iter().any(|t| t.contains("$1 AS canary_text")), "masked canary not in the HTTP bodies");
    assert!(http_requests.lock().unwrap().iter().any(|r| r.path.ends_with("/v1/logs")), "no OTLP/HTTP logs request");

    // The disk: every agent's state_dir; the spool must hold the data.
    for (name, _, state, _, _) in &agents {
        for (path, bytes) in files_under(state) {
            check(&format!("disk, agent {name}: {}", path.strip_prefix(work.path()).unwrap().display()), &bytes);
        }
    }
    let spooled = spooled_metrics(&agents[2].2.join("spool"));
    assert!(!spooled.is_empty(), "the agent with no collector spooled nothing:\n{}", read(&agents[2].4));
    let texts = statement_texts(&spooled);
    assert!(texts.iter().any(|t| t.contains("$1 AS canary_text")), "masked canary not in the spool");

    // The agent that withholds query text: not even the masked texts the
    // gRPC agent sent are in what it sent; every statement text is a token.
    let withheld_conns = withheld_capture.connections();
    check("gRPC, query text withheld, raw TCP stream", &withheld_conns.concat());
    let withheld: Vec<Vec<u8>> = withheld_conns.iter().flat_map(|c| grpc_messages(c)).collect();
    let withheld_bytes = withheld.concat();
    check("gRPC, query text withheld, messages (inflated)", &withheld_bytes);
    let masked: HashSet<String> = statement_texts(&messages)
        .into_iter()
        .map(|t| t.trim_start_matches("activity: ").to_owned())
        .filter(|t| t.len() >= 12 && t != OVERFLOW_TEXT)
        .collect();
    assert!(masked.iter().any(|t| t.contains("canary_text")), "the masked canary is not among {masked:?}");
    let shown: Vec<&String> = masked.iter().filter(|t| contains(&withheld_bytes, t.as_bytes())).collect();
    assert!(shown.is_empty(), "masked texts sent by the agent that withholds them: {shown:?}");
    let tokens = statement_texts(&withheld);
    for t in &tokens {
        let t = t.strip_prefix("activity: ").unwrap_or(t);
        assert!(t.is_empty() || t == OVERFLOW_TEXT || Withheld::parse(t).is_some(), "not a token: {t:?}");
    }
    let activity = tokens.iter().filter(|t| t.starts_with("activity: ") && t.len() > "activity: ".len()).count();
    assert!(activity > 0, "no activity sample with a token among {} texts", tokens.len());
    assert!(
        withheld.iter().any(|m| ExportLogsServiceRequest::decode(&m[..]).is_ok_and(|r| !r.resource_logs.is_empty())),
        "no logs request (samples, plans) from the agent that withholds query text"
    );

    // The collector's outputs: the JSON API and /metrics.
    let queries = http_get(collector.api, "/api/v1/queries?limit=1000&range=1h");
    check("collector API /api/v1/queries", &queries);
    let parsed: serde_json::Value = serde_json::from_slice(&queries).unwrap();
    let rows = parsed["queries"].as_array().unwrap();
    // The canaries' masked shapes are there (a canary with only aliases to
    // tell it apart may be listed under another example: see above).
    let canary_rows = rows.iter().filter(|r| r["text"].as_str().is_some_and(|t| t.contains("FROM canary"))).count();
    assert!(canary_rows >= 1, "no canary statement in the collector's API");
    // Every statement's detail page: samples, plans, errors.
    let mut details = Vec::new();
    for row in rows {
        let fp = row["fingerprint"].as_str().unwrap();
        details.extend(http_get(collector.api, &format!("/api/v1/queries/{fp}?range=1h")));
    }
    check(&format!("collector API /api/v1/queries/{{fingerprint}}, all {} of them", rows.len()), &details);
    assert!(contains(&details, b"Filter"), "no plan among the detail pages");
    // The collector took the withheld fingerprints as they are, merged them
    // with the same statements from the other node, and shows their text.
    let of_withheld = http_get(collector.api, &format!("/api/v1/queries?limit=1000&range=1h&node={WITHHELD_NODE}"));
    let of_withheld: serde_json::Value = serde_json::from_slice(&of_withheld).unwrap();
    let of_withheld: HashMap<u64, &str> = of_withheld["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (u64::from_str_radix(r["fingerprint"].as_str().unwrap(), 16).unwrap(), r["text"].as_str().unwrap()))
        .collect();
    for fp in &sent_as_text {
        let text =
            of_withheld.get(fp).unwrap_or_else(|| panic!("{fp:016x} is not among node {WITHHELD_NODE}'s statements"));
        assert!(!Withheld::is_token(text), "{fp:016x}: the other node's text is not shown: {text}");
    }
    for path in ["/api/v1/findings?state=all", "/api/v1/nodes", "/api/v1/partitions?range=1h", "/metrics"] {
        check(&format!("collector {path}"), &http_get(collector.api, path));
    }
    rt.block_on(collector.stop());
    eprintln!(
        "privacy, {} s, {workload_count} workload literals and {} canaries:\n  {}",
        started.elapsed().as_secs(),
        canaries.len(),
        report.join("\n  ")
    );
}
