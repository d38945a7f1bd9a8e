//! Hostile senders against the whole running collector (receivers, store,
//! API) over real sockets: requests without or with a wrong token,
//! truncated protobuf, attribute values nested 10,000 deep, a 3 MiB
//! attribute value, 100,000 data points in one request, and slowloris
//! connections (silent, or trickling a request head or an HTTP/2
//! preface). Each gets its status code, and a well-behaved agent sending
//! at the same time keeps its latency: its median during the attack is
//! within 10× its baseline median (or 50 ms, whichever is larger, since
//! a baseline of a millisecond or two is mostly scheduler noise on 2
//! shared cores in a debug build),
//! and no request takes a second or more.
//!
//! The tests share the machine's cores with each other, so they take
//! turns ([`SERIAL`]): a latency measured while another test floods the
//! collector would measure that test. Run with `--nocapture` to see the
//! figures (RELIABILITY.md quotes them).
#![allow(clippy::unwrap_used)]

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, metric::Data, number_data_point};
use prost::Message;
use querywatch_collector::config::{Config, Overrides, RawConfig};
use querywatch_collector::receive::{Batch, ConnLimits, IngestCounters, Receiver, ReceiverConfig};
use querywatch_collector::serve::{self, Running};
use querywatch_wire::otlp::{ResourceInfo, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const TOKEN: &str = "ingest-secret";

/// One test at a time: see the module documentation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ns() -> u64 {
    u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

/// `n` statements of one call each, as an agent sends them.
fn agent_request(node: &str, n: usize) -> ExportMetricsServiceRequest {
    let mut obs = Observations::default();
    for i in 0..n {
        let text = format!("SELECT * FROM t{i} WHERE id = $1");
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        obs.statements.entry(key).or_default().record_call(Duration::from_millis(3), None, &text);
    }
    let resource = ResourceInfo { node: node.into(), ..ResourceInfo::default() };
    let end = now_ns();
    encode_metrics(&obs, &resource, (end - 10_000_000_000, end))
}

fn data_points(req: &ExportMetricsServiceRequest) -> usize {
    let mut n = 0;
    for m in req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
        n += match m.data.as_ref().unwrap() {
            Data::Gauge(g) => g.data_points.len(),
            Data::Sum(s) => s.data_points.len(),
            Data::Histogram(h) => h.data_points.len(),
            Data::ExponentialHistogram(h) => h.data_points.len(),
            Data::Summary(s) => s.data_points.len(),
        };
    }
    n
}

/// The whole collector on 127.0.0.1 port 0, with an ingest token and
/// `max_request_bytes` (the default, 16 MiB, unless said).
async fn collector(limits: Option<ConnLimits>) -> Running {
    let raw: RawConfig = toml::from_str(&format!(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[detect]\ninterval = \"1h\"\n"
    ))
    .unwrap();
    let mut config = Config::resolve(raw, &Overrides::default()).unwrap();
    if let Some(l) = limits {
        // Shorter than the file allows, so that a test need not wait minutes.
        config.limits = l;
    }
    serve::start(config).await.unwrap()
}

/// A well-behaved agent: one gRPC channel and one HTTP keep-alive client
/// that stay connected, as the real agent's do.
struct Agent {
    grpc: Channel,
    http: reqwest::Client,
    url: String,
}

impl Agent {
    async fn connect(grpc: SocketAddr, http: SocketAddr) -> Agent {
        let grpc = Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        Agent { grpc, http: reqwest::Client::new(), url: format!("http://{http}/v1/metrics") }
    }

    /// One export over each transport; both must be accepted. The slower
    /// of the two.
    async fn send(&self) -> Duration {
        let req = agent_request("good-agent", 5);
        let started = Instant::now();
        let mut grpc_req = tonic::Request::new(req.clone());
        grpc_req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        MetricsServiceClient::new(self.grpc.clone()).export(grpc_req).await.unwrap();
        let grpc = started.elapsed();
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "the good agent was refused");
        grpc.max(started.elapsed())
    }

    async fn baseline(&self) -> Latency {
        let mut samples = Vec::new();
        for _ in 0..20 {
            samples.push(self.send().await);
        }
        Latency::of(samples)
    }

    /// Sends while `attack` runs (and at least 10 times); the attack's
    /// result and the agent's latency meanwhile.
    async fn during<T: Send + 'static>(&self, attack: impl Future<Output = T> + Send + 'static) -> (T, Latency) {
        let attack = tokio::spawn(attack);
        let mut samples = Vec::new();
        while !attack.is_finished() || samples.len() < 10 {
            samples.push(self.send().await);
        }
        (attack.await.unwrap(), Latency::of(samples))
    }
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    max: Duration,
    n: usize,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort();
        Latency { p50: samples[samples.len() / 2], max: *samples.last().unwrap(), n: samples.len() }
    }

    /// The bound of the module documentation.
    fn assert_close_to(&self, baseline: &Latency, case: &str) {
        eprintln!(
            "{case}: good agent p50 {:.1} ms, max {:.1} ms over {} sends (baseline p50 {:.1} ms, max {:.1} ms)",
            ms(self.p50),
            ms(self.max),
            self.n,
            ms(baseline.p50),
            ms(baseline.max)
        );
        let bound = (baseline.p50 * 10).max(Duration::from_millis(50));
        assert!(self.p50 <= bound, "{case}: the good agent's median {:?} is past {bound:?}", self.p50);
        assert!(self.max < Duration::from_secs(1), "{case}: a good request took {:?}", self.max);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- Hand-made protobuf, to send what no well-behaved encoder would ----

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    varint(((tag << 3) | 2) as usize, &mut out);
    varint(bytes.len(), &mut out);
    out.extend_from_slice(bytes);
    out
}

/// An `AnyValue` nested `depth` deep, arrays and key-value lists in
/// turn, built from the inside out (an encoder would recurse, and so
/// overflow the stack of the test itself).
fn nested_any_value(depth: usize) -> Vec<u8> {
    let mut v = field(1, b"leaf"); // string_value
    for i in 0..depth {
        v = if i % 2 == 0 {
            field(5, &field(1, &v)) // array_value { values: [v] }
        } else {
            let kv = [field(1, b"k"), field(2, &v)].concat();
            field(6, &field(1, &kv)) // kvlist_value { values: [{k: v}] }
        };
    }
    v
}

/// `ResourceMetrics` whose resource has one attribute nested `depth` deep.
fn deep_resource_metrics(depth: usize) -> Vec<u8> {
    let kv = [field(1, b"deep"), field(2, &nested_any_value(depth))].concat();
    field(1, &field(1, &kv)) // resource { attributes: [kv] }
}

/// The same as OTLP/JSON.
fn deep_json(depth: usize) -> String {
    let mut s = String::from(r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"deep","value":"#);
    for _ in 0..depth {
        s.push_str(r#"{"arrayValue":{"values":["#);
    }
    s.push_str(r#"{"stringValue":"leaf"}"#);
    for _ in 0..depth {
        s.push_str("]}}");
    }
    s.push_str("}]}}]}");
    s
}

/// Field 1 with arbitrary bytes: on the wire, an
/// `ExportMetricsServiceRequest` whose `resource_metrics` are `bytes`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    #[prost(bytes = "vec", tag = "1")]
    resource_metrics: Vec<u8>,
}

/// One gRPC export of hand-made bytes; its status code.
async fn raw_grpc(ch: Channel, resource_metrics: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    );
    let codec = tonic_prost::ProstCodec::<RawRequest, ExportMetricsServiceResponse>::default();
    let mut req = tonic::Request::new(RawRequest { resource_metrics });
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    match grpc.unary(req, path, codec).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// POSTs `body` to `url`; the status and the `google.rpc.Status`
/// message of an error (protobuf or JSON).
async fn post(client: &reqwest::Client, url: &str, token: Option<&str>, json: bool, body: Vec<u8>) -> (u16, String) {
    let mut req = client
        .post(url)
        .header("content-type", if json { "application/json" } else { "application/x-protobuf" })
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let message = if status == 200 {
        String::new()
    } else if json {
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["message"].as_str().unwrap_or("").to_owned()
    } else {
        tonic_types::Status::decode(&bytes[..]).map(|s| s.message).unwrap_or_default()
    };
    (status, message)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Requests the collector must refuse, each sent many times at once over
/// both transports while the good agent sends; then requests it must take
/// although they are large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_agents_keep_their_latency() {
    let _turn = SERIAL.lock().await;
    let c = collector(None).await;
    let (grpc, http) = (c.grpc.unwrap(), c.otlp_http.unwrap());
    let agent = Agent::connect(grpc, http).await;
    let base = agent.baseline().await;
    let url = format!("http://{http}/v1/metrics");
    let good = agent_request("x", 5);

    // 1. No token and a wrong token: 401 / UNAUTHENTICATED, 300 requests.
    let (u, g, b) = (url.clone(), agent.grpc.clone(), good.clone());
    let (codes, lat) = agent
        .during(async move {
            let client = reqwest::Client::new();
            let mut codes = Vec::new();
            for i in 0..100 {
                let token = if i % 2 == 0 { None } else { Some("wrong-token") };
                codes.push(post(&client, &u, token, false, b.encode_to_vec()).await.0);
                let mut req = tonic::Request::new(b.clone());
                if i % 2 == 1 {
                    req.metadata_mut().insert("authorization", "Bearer wrong-token".parse().unwrap());
                }
                let e = MetricsServiceClient::new(g.clone()).export(req).await.unwrap_err();
                codes.push(if e.code() == Code::Unauthenticated { 401 } else { 0 });
            }
            codes
        })
        .await;
    assert!(codes.iter().all(|&c| c == 401), "{codes:?}");
    lat.assert_close_to(&base, "no/wrong token (200 requests)");

    // 2. Truncated protobuf: 400 / INVALID_ARGUMENT.
    let bytes = good.encode_to_vec();
    let rm = good.resource_metrics[0].encode_to_vec();
    let (u, g) = (url.clone(), agent.grpc.clone());
    let ((http_codes, grpc_codes), lat) = agent
        .during(async move {
            let client = reqwest::Client::new();
            let (mut h, mut gr) = (Vec::new(), Vec::new());
            for i in 1..=50 {
                let cut = bytes.len() * i / 51;
                h.push(post(&client, &u, Some(TOKEN), false, bytes[..cut].to_vec()).await.0);
                gr.push(raw_grpc(g.clone(), rm[..rm.len() * i / 51].to_vec()).await);
            }
            (h, gr)
        })
        .await;
    assert!(http_codes.iter().all(|&c| c == 400), "{http_codes:?}");
    assert!(grpc_codes.iter().all(|&c| c == Code::InvalidArgument), "{grpc_codes:?}");
    lat.assert_close_to(&base, "truncated protobuf (100 requests)");

    // 3. Attribute values nested 10,000 deep: prost's recursion limit
    // (100) and serde_json's (128) stop decoding: 400, not a stack
    // overflow that would take the process down.
    let depth = 10_000;
    let deep = deep_resource_metrics(depth);
    let deep_request = field(1, &deep);
    let deep_json = deep_json(depth).into_bytes();
    let (u, g) = (url.clone(), agent.grpc.clone());
    let (results, lat) = agent
        .during(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for _ in 0..10 {
                out.push(post(&client, &u, Some(TOKEN), false, deep_request.clone()).await);
                out.push(post(&client, &u, Some(TOKEN), true, deep_json.clone()).await);
                let code = raw_grpc(g.clone(), deep.clone()).await;
                out.push((if code == Code::InvalidArgument { 400 } else { code as u16 }, String::new()));
            }
            out
        })
        .await;
    for (status, message) in &results {
        assert_eq!(*status, 400, "{message}");
    }
    assert!(results[0].1.contains("recursion"), "{}", results[0].1);
    assert!(results[1].1.contains("recursion"), "{}", results[1].1);
    lat.assert_close_to(&base, "attributes nested 10,000 deep (30 requests)");
    eprintln!("nested: protobuf says {:?}; JSON says {:?}", results[0].1, results[1].1);

    // 4. A 3 MiB attribute value within the size limit: ours, accepted.
    let mut huge = agent_request("huge-attribute", 1);
    huge.resource_metrics[0].resource.as_mut().unwrap().attributes.push(KeyValue {
        key: "filler".into(),
        value: Some(AnyValue { value: Some(Value::StringValue("x".repeat(3 << 20))) }),
        key_strindex: 0,
    });
    let (u, h) = (url.clone(), huge.clone());
    let (statuses, lat) = agent
        .during(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for _ in 0..5 {
                out.push(post(&client, &u, Some(TOKEN), false, h.encode_to_vec()).await.0);
            }
            out
        })
        .await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    lat.assert_close_to(&base, "3 MiB attribute value (5 requests of 3 MiB)");

    // 5. 100,000 data points in one request. Foreign points (a gauge):
    // accepted, counted and reported back as rejected, never stored.
    let foreign = ExportMetricsServiceRequest {
        resource_metrics: vec![opentelemetry_proto::tonic::metrics::v1::ResourceMetrics {
            scope_metrics: vec![opentelemetry_proto::tonic::metrics::v1::ScopeMetrics {
                metrics: vec![Metric {
                    name: "flood".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: (0..100_000)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: now_ns(),
                                value: Some(number_data_point::Value::AsInt(i)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(data_points(&foreign), 100_000);
    // Ours, 100,000 distinct statements (a point each): 22 MiB, past the
    // 16 MiB limit, refused whole with the reason (413, permanent: the
    // agent must not retry it). Gzipped it is small on the wire, and
    // refused when inflating passes the limit.
    let ours = agent_request("hundred-thousand", 100_000);
    let our_points = data_points(&ours);
    assert!(our_points >= 100_000, "{our_points}");
    // And 60,000 statements, 13 MiB: within the limit, taken, every one a
    // new fingerprint for the store (past `max_fingerprints`, 50,000:
    // the rest fold into `<other>`).
    let within = agent_request("sixty-thousand", 60_000);
    let within_points = data_points(&within) as u64;
    let (fbytes, obytes, wbytes) = (foreign.encode_to_vec(), ours.encode_to_vec(), within.encode_to_vec());
    let ogz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&obytes).unwrap();
        e.finish().unwrap()
    };
    eprintln!(
        "100k points: foreign gauge {:.1} MiB; ours {} points {:.1} MiB ({:.1} MiB gzipped); 60k statements {:.1} MiB",
        fbytes.len() as f64 / 1048576.0,
        our_points,
        obytes.len() as f64 / 1048576.0,
        ogz.len() as f64 / 1048576.0,
        wbytes.len() as f64 / 1048576.0,
    );
    let rss_before = rss_mib();
    let u = url.clone();
    let (answers, lat) = agent
        .during(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for (what, body, gzipped) in [
                ("foreign", fbytes, false),
                ("ours", obytes, false),
                ("ours gzipped", ogz, true),
                ("60k", wbytes, false),
            ] {
                let started = Instant::now();
                let mut req =
                    client.post(&u).bearer_auth(TOKEN).header("content-type", "application/x-protobuf").body(body);
                if gzipped {
                    req = req.header("content-encoding", "gzip");
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap();
                let message = match status {
                    200 => ExportMetricsServiceResponse::decode(&bytes[..])
                        .unwrap()
                        .partial_success
                        .map(|p| format!("partial success: {} rejected", p.rejected_data_points))
                        .unwrap_or_default(),
                    _ => tonic_types::Status::decode(&bytes[..]).unwrap().message,
                };
                out.push((what, status, message, started.elapsed()));
            }
            out
        })
        .await;
    for (what, status, message, took) in &answers {
        eprintln!("100k points: {what} -> {status} {message:?} in {:.0} ms", ms(*took));
    }
    eprintln!("100k points: RSS of the test process (client and collector) {rss_before:.0} -> {:.0} MiB", rss_mib());
    let statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
    assert_eq!(statuses, [200, 413, 413, 200], "{answers:?}");
    assert_eq!(answers[0].2, "partial success: 100000 rejected");
    assert!(answers[1].2.contains("larger than the limit"), "{}", answers[1].2);
    assert!(answers[2].2.contains("decompressed"), "{}", answers[2].2);
    lat.assert_close_to(&base, "100,000 data points in one request");
    let s = c.shared.ingest.snapshot();
    assert_eq!(s.data_points_ignored, 100_000, "{s:?}");
    assert!(s.data_points_accepted >= within_points, "{s:?}");
    assert_eq!(s.rejected.too_large, 2, "{s:?}");
    // The store takes the 60,000 new fingerprints off the runtime's
    // threads, and the API answers meanwhile and after.
    let api = format!("http://{}/api/v1/queries?limit=5", c.api);
    let started = Instant::now();
    let resp = reqwest::get(&api).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    eprintln!("100k points: /api/v1/queries answered in {:.0} ms", ms(started.elapsed()));
    let rejected = c.shared.ingest.snapshot().rejected;
    assert_eq!(rejected.unauthenticated, 200, "{rejected:?}");
    assert_eq!(rejected.malformed, 100 + 30, "{rejected:?}");
    c.stop().await;
}

/// Connections that hold sockets without sending a request: silent ones
/// on both ports, ones that trickle a request head byte by byte, ones that
/// trickle an HTTP/2 preface. With the default limits the good agent
/// keeps its latency while 600 of them are open; with short limits the
/// collector closes each kind on time, and past `max_connections` it
/// closes new connections at once while the good agent's stay served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_bounded_and_do_not_slow_agents() {
    let _turn = SERIAL.lock().await;

    // Default limits: the attack is inside them, the agent must not notice.
    let c = collector(None).await;
    let (grpc, http) = (c.grpc.unwrap(), c.otlp_http.unwrap());
    let agent = Agent::connect(grpc, http).await;
    let base = agent.baseline().await;
    let (open, lat) = agent
        .during(async move {
            let mut conns = Vec::new();
            for _ in 0..200 {
                conns.push(TcpStream::connect(grpc).await.unwrap()); // silent
                conns.push(TcpStream::connect(http).await.unwrap()); // silent
                let mut t = TcpStream::connect(http).await.unwrap();
                t.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
                conns.push(t);
            }
            // Trickle one more byte of a header on each head, five times.
            for round in 0..5 {
                for t in conns.iter_mut().skip(2).step_by(3) {
                    let _ = t.write_all(if round < 4 { b"X" } else { b"-" }).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            conns.len()
        })
        .await;
    assert_eq!(open, 600);
    lat.assert_close_to(&base, "slowloris: 600 silent or trickling connections");
    c.stop().await;

    // Short limits: every kind is closed on time.
    let limits = ConnLimits {
        max_connections: 40,
        idle_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(1),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Batch>>(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = ReceiverConfig {
        grpc: Some(local),
        http: Some(local),
        token: Some(TOKEN.into()),
        tls: None,
        max_request_bytes: 1 << 20,
        limits,
    };
    let receiver = Receiver::bind(cfg, tx, Arc::new(IngestCounters::new())).await.unwrap();
    let (grpc, http) = (receiver.grpc_addr().unwrap(), receiver.http_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(receiver.run(async {
        let _ = stopped.await;
    }));

    /// How long until the server closes `t` (EOF or reset), reading and
    /// discarding what it says; `None` past `within`.
    async fn closed_after(mut t: TcpStream, within: Duration) -> (Option<Duration>, Vec<u8>) {
        let started = Instant::now();
        let mut said = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((started + within).into(), t.read(&mut buf)).await {
                Err(_) => return (None, said),
                Ok(Ok(0)) | Ok(Err(_)) => return (Some(started.elapsed()), said),
                Ok(Ok(n)) => said.extend_from_slice(&buf[..n]),
            }
        }
    }

    // A request head that never ends, one byte every 300 ms: closed after
    // the header timeout (1 s), though bytes keep moving.
    let mut head = TcpStream::connect(http).await.unwrap();
    head.write_all(b"POST /v1/metrics HTTP/1.1\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if head.write_all(b"X").await.is_err() || started.elapsed() > Duration::from_secs(10) {
                return started.elapsed();
            }
        }
    });
    let refused_after = trickle.await.unwrap();
    eprintln!("slowloris, short limits: a trickled request head was cut after {refused_after:?} (header timeout 1 s)");
    assert!(refused_after < Duration::from_secs(5), "{refused_after:?}");

    // Silent connections on both ports, and a half HTTP/2 preface: closed
    // after the idle timeout (2 s).
    let mut silent = Vec::new();
    for addr in [grpc, http] {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut preface = TcpStream::connect(grpc).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    silent.push(preface);
    // Watched at once, so each is timed from its own start.
    let watched: Vec<_> = silent.into_iter().map(|t| tokio::spawn(closed_after(t, Duration::from_secs(10)))).collect();
    for (i, w) in watched.into_iter().enumerate() {
        let (after, _) = w.await.unwrap();
        let after = after.unwrap_or_else(|| panic!("silent connection {i} still open after 10 s"));
        eprintln!("slowloris, short limits: silent connection {i} closed after {after:?} (idle timeout 2 s)");
        assert!(after < Duration::from_secs(6), "{after:?}");
    }

    // Past max_connections (40 per listener, the agent holds one on
    // each): new connections are closed at once; the agent's go on. (A
    // fresh agent: the first one's connections sat idle past 2 s above.)
    let agent = Agent::connect(grpc, http).await;
    agent.send().await;
    let mut held = Vec::new();
    for _ in 0..39 {
        held.push(TcpStream::connect(http).await.unwrap());
    }
    // Let the accept loop take them before the one past the limit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = TcpStream::connect(http).await.unwrap();
    let (after, _) = closed_after(extra, Duration::from_secs(1)).await;
    assert!(after.is_some(), "a connection past max_connections was kept");
    eprintln!("slowloris, short limits: the connection past max_connections was closed after {after:?}");
    let took = agent.send().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Once the idle ones are closed, new connections are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut t = TcpStream::connect(http).await.unwrap();
        let ok = t.write_all(b"GET /v1/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_ok();
        let (closed, said) = closed_after(t, Duration::from_secs(2)).await;
        if ok && closed.is_some() && said.starts_with(b"HTTP/1.1 405") {
            break;
        }
        assert!(Instant::now() < deadline, "no new connection served after the slots were freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), server).await.unwrap().unwrap().unwrap();
}
