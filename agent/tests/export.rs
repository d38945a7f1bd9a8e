//! The exporter against real collectors on 127.0.0.1: a tonic server built
//! from opentelemetry-proto's service traits and an axum OTLP/HTTP server,
//! both recording what they accept and answering from a script (ok,
//! unavailable, throttled, permanent errors). Collector outages are real:
//! the server is stopped and its port refuses connections. Both servers
//! also speak TLS with a self-signed certificate (rcgen), for
//! `export.ca_file`.
//!
//! No sleeping-and-hoping: tests wait for receipts and for the collector's
//! state with deadlines; waits the exporter must honour are measured.
#![allow(clippy::unwrap_used)]

mod export {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
        MetricsService, MetricsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use prost::Message;
    use querywatch_agent::config::{ExportConfig, Protocol, QueryText};
    use querywatch_agent::export::{
        Batch, ExportCounters, ExportHandle, Exporter, Options, Outcome, Receipt, RetryPolicy, spool,
    };
    use querywatch_wire::otlp::{ResourceInfo, decode_logs, decode_metrics, encode_logs, encode_metrics};
    use querywatch_wire::{Observations, StatementKey};
    use std::collections::{BTreeMap, VecDeque};
    use std::io::Read;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio::sync::{Notify, mpsc, oneshot};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;
    use tonic::codec::CompressionEncoding;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    const WAIT: Duration = Duration::from_secs(20);
    const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
    const TOKEN: &str = "Bearer s3cret";

    // ---- what the agent sends -------------------------------------------

    fn observations(n: u32) -> Observations {
        let mut obs = Observations::default();
        let text = format!("SELECT * FROM t{n} WHERE id = $1");
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for i in 0..=u64::from(n) {
            s.record_call(Duration::from_millis(1 + i), Some(1_700_000_001_000 + i as i64), &text);
        }
        obs
    }

    /// Batch `n`: one statement called `n + 1` times, its watermark is `n`.
    fn batch(n: u32) -> Batch<u32> {
        let obs = observations(n);
        let resource = ResourceInfo { node: "db-1".into(), cluster: "shop-eu".into(), ..ResourceInfo::default() };
        Batch {
            metrics: encode_metrics(&obs, &resource, INTERVAL),
            logs: encode_logs(&obs, &resource, INTERVAL),
            watermark: n,
        }
    }

    /// Which batch a received request is, read with the wire decoder; also
    /// checks that what arrived is what batch `n` says.
    fn metrics_number(req: &ExportMetricsServiceRequest) -> u32 {
        let decoded = decode_metrics(req).unwrap();
        assert_eq!(decoded.batches.len(), 1);
        let (resource, obs) = &decoded.batches[0];
        assert_eq!(resource.node, "db-1");
        let (key, stats) = obs.statements.iter().next().unwrap();
        let n: u32 = key.text.trim_start_matches("SELECT * FROM t").split(' ').next().unwrap().parse().unwrap();
        assert_eq!(stats.calls, u64::from(n) + 1, "calls of batch {n}");
        assert_eq!(req, &batch(n).metrics, "batch {n} arrived intact");
        n
    }

    fn logs_number(req: &ExportLogsServiceRequest) -> u32 {
        let decoded = decode_logs(req).unwrap();
        let (_, obs) = &decoded.batches[0];
        let (key, stats) = obs.statements.iter().next().unwrap();
        let n: u32 = key.text.trim_start_matches("SELECT * FROM t").split(' ').next().unwrap().parse().unwrap();
        assert_eq!(stats.slowest.as_ref().unwrap().duration, Duration::from_millis(1 + u64::from(n)));
        assert_eq!(req, &batch(n).logs, "batch {n} arrived intact");
        n
    }

    // ---- the collector ----------------------------------------------------

    /// How the collector answers one request.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        Ok,
        /// Accepted, with this many items rejected (partial success).
        Partial(i64),
        /// gRPC UNAVAILABLE / HTTP 503 without Retry-After.
        Unavailable,
        /// gRPC RESOURCE_EXHAUSTED with RetryInfo / HTTP 429 with Retry-After (whole seconds).
        Throttle(Duration),
        /// gRPC UNAUTHENTICATED / HTTP 401.
        Unauthenticated,
        /// gRPC INVALID_ARGUMENT / HTTP 400.
        InvalidArgument,
    }

    /// One request as the collector saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        signal: &'static str,
        at: Instant,
        headers: BTreeMap<String, String>,
    }

    #[derive(Default)]
    struct Collector {
        metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
        logs: Mutex<Vec<ExportLogsServiceRequest>>,
        seen: Mutex<Vec<Seen>>,
        script: Mutex<VecDeque<Reply>>,
        changed: Notify,
    }

    impl Collector {
        fn script(&self, replies: impl IntoIterator<Item = Reply>) {
            self.script.lock().unwrap().extend(replies);
        }

        /// Records a request and says how to answer it.
        fn arrive(&self, signal: &'static str, headers: BTreeMap<String, String>) -> Reply {
            self.seen.lock().unwrap().push(Seen { signal, at: Instant::now(), headers });
            self.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok)
        }

        fn accept_metrics(&self, req: ExportMetricsServiceRequest) {
            self.metrics.lock().unwrap().push(req);
            self.changed.notify_waiters();
        }

        fn accept_logs(&self, req: ExportLogsServiceRequest) {
            self.logs.lock().unwrap().push(req);
            self.changed.notify_waiters();
        }

        fn metrics_numbers(&self) -> Vec<u32> {
            self.metrics.lock().unwrap().iter().map(metrics_number).collect()
        }

        fn logs_numbers(&self) -> Vec<u32> {
            self.logs.lock().unwrap().iter().map(logs_number).collect()
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        /// Waits until `done` holds, failing the test after [`WAIT`].
        async fn wait_for(&self, what: &str, done: impl Fn(&Collector) -> bool) {
            let deadline = Instant::now() + WAIT;
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(self) {
                    return;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    panic!("timed out waiting for {what}");
                }
            }
        }
    }

    fn grpc_headers(m: &tonic::metadata::MetadataMap) -> BTreeMap<String, String> {
        m.clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect()
    }

    fn grpc_error(reply: Reply) -> Option<Status> {
        match reply {
            Reply::Ok | Reply::Partial(_) => None,
            Reply::Unavailable => Some(Status::unavailable("collector restarting")),
            Reply::Throttle(d) => Some(Status::with_error_details(
                Code::ResourceExhausted,
                "slow down",
                ErrorDetails::with_retry_info(Some(d)),
            )),
            Reply::Unauthenticated => Some(Status::unauthenticated("bad token")),
            Reply::InvalidArgument => Some(Status::invalid_argument("malformed data point")),
        }
    }

    #[derive(Clone)]
    struct Grpc(Arc<Collector>);

    #[tonic::async_trait]
    impl MetricsService for Grpc {
        async fn export(
            &self,
            request: tonic::Request<ExportMetricsServiceRequest>,
        ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
            let reply = self.0.arrive("metrics", grpc_headers(request.metadata()));
            if let Some(status) = grpc_error(reply) {
                return Err(status);
            }
            self.0.accept_metrics(request.into_inner());
            let partial_success = match reply {
                Reply::Partial(n) => {
                    Some(ExportMetricsPartialSuccess { rejected_data_points: n, error_message: "too old".into() })
                }
                _ => None,
            };
            Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success }))
        }
    }

    #[tonic::async_trait]
    impl LogsService for Grpc {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
            let reply = self.0.arrive("logs", grpc_headers(request.metadata()));
            if let Some(status) = grpc_error(reply) {
                return Err(status);
            }
            self.0.accept_logs(request.into_inner());
            let partial_success = match reply {
                Reply::Partial(n) => {
                    Some(ExportLogsPartialSuccess { rejected_log_records: n, error_message: "too old".into() })
                }
                _ => None,
            };
            Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success }))
        }
    }

    fn http_headers(h: &HeaderMap) -> BTreeMap<String, String> {
        h.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect()
    }

    fn http_body(headers: &HeaderMap, body: &Bytes) -> Vec<u8> {
        if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
            out
        } else {
            body.to_vec()
        }
    }

    fn http_error(reply: Reply) -> Option<Response> {
        let status_body = |code: i32, message: &str| {
            tonic_types::pb::Status { code, message: message.into(), details: vec![] }.encode_to_vec()
        };
        let proto = [("content-type", "application/x-protobuf".to_owned())];
        Some(match reply {
            Reply::Ok | Reply::Partial(_) => return None,
            Reply::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            Reply::Throttle(d) => {
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", d.as_secs().to_string())]).into_response()
            }
            Reply::Unauthenticated => (StatusCode::UNAUTHORIZED, proto, status_body(16, "bad token")).into_response(),
            Reply::InvalidArgument => {
                (StatusCode::BAD_REQUEST, proto, status_body(3, "malformed data point")).into_response()
            }
        })
    }

    async fn http_metrics(State(c): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> Response {
        let reply = c.arrive("metrics", http_headers(&headers));
        if let Some(r) = http_error(reply) {
            return r;
        }
        c.accept_metrics(ExportMetricsServiceRequest::decode(&http_body(&headers, &body)[..]).unwrap());
        let partial_success = match reply {
            Reply::Partial(n) => {
                Some(ExportMetricsPartialSuccess { rejected_data_points: n, error_message: "too old".into() })
            }
            _ => None,
        };
        let body = ExportMetricsServiceResponse { partial_success }.encode_to_vec();
        ([("content-type", "application/x-protobuf")], body).into_response()
    }

    async fn http_logs(State(c): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> Response {
        let reply = c.arrive("logs", http_headers(&headers));
        if let Some(r) = http_error(reply) {
            return r;
        }
        c.accept_logs(ExportLogsServiceRequest::decode(&http_body(&headers, &body)[..]).unwrap());
        let partial_success = match reply {
            Reply::Partial(n) => {
                Some(ExportLogsPartialSuccess { rejected_log_records: n, error_message: "too old".into() })
            }
            _ => None,
        };
        let body = ExportLogsServiceResponse { partial_success }.encode_to_vec();
        ([("content-type", "application/x-protobuf")], body).into_response()
    }

    /// A running collector on one address; stop it to make the port refuse.
    struct Server {
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    /// A server certificate and its key, PEM.
    struct Identity {
        cert: String,
        key: String,
    }

    /// A self-signed certificate for 127.0.0.1 and localhost: a private CA
    /// of one, trusted by nothing but what is told to trust it.
    fn self_signed() -> Identity {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        Identity { cert: ck.cert.pem(), key: ck.signing_key.serialize_pem() }
    }

    /// A TCP listener that hands out TLS streams (axum's HTTP server runs
    /// on any [`axum::serve::Listener`]). A failed handshake (a client that
    /// does not trust the certificate) is dropped and the next one accepted.
    struct TlsListener {
        tcp: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl TlsListener {
        fn new(tcp: TcpListener, id: &Identity) -> TlsListener {
            use tokio_rustls::rustls;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let certs = vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap();
            // The provider explicitly: the process-wide default is not set.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) }
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    impl Server {
        async fn start(protocol: Protocol, collector: Arc<Collector>, addr: SocketAddr) -> Server {
            Server::start_with(protocol, collector, addr, None).await
        }

        /// With `tls`, the server speaks TLS with that identity.
        async fn start_with(
            protocol: Protocol,
            collector: Arc<Collector>,
            addr: SocketAddr,
            tls: Option<&Identity>,
        ) -> Server {
            // Binding the same port again after a stop: tokio sets
            // SO_REUSEADDR on listeners, so TIME_WAIT does not get in the way.
            let listener = TcpListener::bind(addr).await.unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = match protocol {
                Protocol::Grpc => {
                    let svc = Grpc(collector);
                    let metrics = MetricsServiceServer::new(svc.clone())
                        .accept_compressed(CompressionEncoding::Gzip)
                        .send_compressed(CompressionEncoding::Gzip);
                    let logs = LogsServiceServer::new(svc)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .send_compressed(CompressionEncoding::Gzip);
                    let mut builder = tonic::transport::Server::builder();
                    if let Some(id) = tls {
                        let identity = tonic::transport::Identity::from_pem(&id.cert, &id.key);
                        builder =
                            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
                    }
                    tokio::spawn(async move {
                        builder
                            .add_service(metrics)
                            .add_service(logs)
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(listener),
                                async move {
                                    let _ = stopped.await;
                                },
                            )
                            .await
                            .unwrap();
                    })
                }
                Protocol::HttpProtobuf => {
                    let app = axum::Router::new()
                        .route("/v1/metrics", axum::routing::post(http_metrics))
                        .route("/v1/logs", axum::routing::post(http_logs))
                        .with_state(collector);
                    let stopped = async move {
                        let _ = stopped.await;
                    };
                    match tls {
                        Some(id) => {
                            let listener = TlsListener::new(listener, id);
                            tokio::spawn(async move {
                                axum::serve(listener, app).with_graceful_shutdown(stopped).await.unwrap();
                            })
                        }
                        None => tokio::spawn(async move {
                            axum::serve(listener, app).with_graceful_shutdown(stopped).await.unwrap();
                        }),
                    }
                }
            };
            Server { stop, task }
        }

        /// Stops accepting and closes every connection; returns once the
        /// port is closed.
        async fn stop(self) {
            let _ = self.stop.send(());
            tokio::time::timeout(WAIT, self.task).await.expect("collector stops").unwrap();
        }
    }

    /// An address nothing listens on (yet).
    async fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
    }

    // ---- the exporter -----------------------------------------------------

    fn config(protocol: Protocol, addr: SocketAddr, gzip: bool, spool_max_bytes: u64) -> ExportConfig {
        ExportConfig {
            endpoint: format!("http://{addr}"),
            protocol,
            headers: BTreeMap::from([
                ("authorization".to_owned(), TOKEN.to_owned()),
                ("x-tenant".to_owned(), "shop".to_owned()),
            ]),
            timeout: Duration::from_secs(5),
            gzip,
            query_text: QueryText::Masked,
            spool_max_bytes,
            ca_pem: None,
            client_identity: None,
        }
    }

    /// Quick retries so an outage is detected in well under a second.
    fn options() -> Options {
        Options {
            retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_elapsed: Duration::from_millis(300),
            },
            flush_timeout: Duration::from_secs(1),
        }
    }

    type Receipts = mpsc::UnboundedReceiver<Receipt<u32>>;

    fn start(config: &ExportConfig, state: &Path, options: Options) -> (ExportHandle<u32>, Receipts) {
        Exporter::new(config, state, options).unwrap().spawn(8)
    }

    async fn receipt(rx: &mut Receipts) -> Receipt<u32> {
        tokio::time::timeout(WAIT, rx.recv()).await.expect("a receipt in time").expect("exporter running")
    }

    async fn submit_all(h: &ExportHandle<u32>, numbers: impl IntoIterator<Item = u32>) {
        for n in numbers {
            assert!(h.submit(batch(n)).await.is_ok());
        }
    }

    const PROTOCOLS: [Protocol; 2] = [Protocol::Grpc, Protocol::HttpProtobuf];

    // ---- tests ------------------------------------------------------------

    async fn batches_arrive_intact(protocol: Protocol, gzip: bool) {
        let collector = Arc::new(Collector::default());
        let addr = free_addr().await;
        let server = Server::start(protocol, collector.clone(), addr).await;
        let state = tempfile::tempdir().unwrap();
        let (h, mut rx) = start(&config(protocol, addr, gzip, 1 << 20), state.path(), options());
        collector.script([Reply::Ok, Reply::Ok, Reply::Partial(2), Reply::Partial(1)]);
        submit_all(&h, 0..3).await;
        for n in 0..3 {
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: n, outcome: Outcome::Acked }, "{protocol:?}");
        }
        assert_eq!(collector.metrics_numbers(), [0, 1, 2]);
        assert_eq!(collector.logs_numbers(), [0, 1, 2]);
        let seen = collector.seen();
        assert_eq!(seen.iter().map(|s| s.signal).collect::<Vec<_>>(), ["metrics", "logs"].repeat(3));
        for s in &seen {
            assert_eq!(s.headers.get("authorization").map(String::as_str), Some(TOKEN), "{s:?}");
            assert_eq!(s.headers.get("x-tenant").map(String::as_str), Some("shop"));
            let encoding = match protocol {
                Protocol::Grpc => s.headers.get("grpc-encoding"),
                Protocol::HttpProtobuf => {
                    assert_eq!(s.headers["content-type"], "application/x-protobuf");
                    s.headers.get("content-encoding")
                }
            };
            assert_eq!(encoding.map(String::as_str), gzip.then_some("gzip"), "{protocol:?} {s:?}");
        }
        let c = h.shutdown().await;
        assert_eq!((c.batches_submitted, c.batches_acked, c.requests), (3, 3, 6));
        assert_eq!((c.rejected_data_points, c.rejected_log_records), (2, 1), "partial success counted");
        assert_eq!((c.retries, c.spooled_batches, c.permanent_failures), (0, 0, 0));
        assert!(c.last_success.is_some());
        server.stop().await;
    }

    #[tokio::test]
    async fn grpc_batches_arrive_intact_with_headers_and_gzip() {
        batches_arrive_intact(Protocol::Grpc, true).await;
        batches_arrive_intact(Protocol::Grpc, false).await;
    }

    #[tokio::test]
    async fn http_batches_arrive_intact_with_headers_and_gzip() {
        batches_arrive_intact(Protocol::HttpProtobuf, true).await;
        batches_arrive_intact(Protocol::HttpProtobuf, false).await;
    }

    /// Up, killed, down for a while, back: every batch arrives exactly
    /// once and in order, and every watermark is settled in order.
    async fn outage_spools_then_drains_in_order(protocol: Protocol) {
        let collector = Arc::new(Collector::default());
        let addr = free_addr().await;
        let server = Server::start(protocol, collector.clone(), addr).await;
        let state = tempfile::tempdir().unwrap();
        let (h, mut rx) = start(&config(protocol, addr, true, 1 << 20), state.path(), options());

        submit_all(&h, [0]).await;
        assert_eq!(receipt(&mut rx).await.outcome, Outcome::Acked);

        server.stop().await;
        submit_all(&h, 1..6).await;
        for n in 1..6 {
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: n, outcome: Outcome::Spooled }, "{protocol:?}");
        }
        let c = h.health().snapshot();
        assert_eq!((c.spooled_batches, c.spool_files), (5, 5));
        assert!(c.retries > 0, "retried before spooling");
        assert_eq!(std::fs::read_dir(state.path().join("spool")).unwrap().count(), 5);

        let server = Server::start(protocol, collector.clone(), addr).await;
        collector.wait_for("the spool to drain", |c| c.metrics.lock().unwrap().len() == 6).await;
        collector.wait_for("the logs too", |c| c.logs.lock().unwrap().len() == 6).await;
        submit_all(&h, [6]).await;
        let r = receipt(&mut rx).await;
        assert_eq!(r.watermark, 6);
        assert!(matches!(r.outcome, Outcome::Acked | Outcome::Spooled), "{r:?}");
        collector.wait_for("batch 6", |c| c.logs.lock().unwrap().len() == 7).await;

        assert_eq!(collector.metrics_numbers(), (0..7).collect::<Vec<_>>(), "{protocol:?}: no loss, no duplicate");
        assert_eq!(collector.logs_numbers(), (0..7).collect::<Vec<_>>(), "{protocol:?}");
        let c = h.shutdown().await;
        assert_eq!((c.batches_submitted, c.batches_acked, c.spool_files, c.spool_bytes), (7, 7, 0, 0));
        assert_eq!(c.spool_dropped_batches, 0);
        assert_eq!(std::fs::read_dir(state.path().join("spool")).unwrap().count(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn grpc_collector_down_then_back_spools_and_drains_in_order() {
        outage_spools_then_drains_in_order(Protocol::Grpc).await;
    }

    #[tokio::test]
    async fn http_collector_down_then_back_spools_and_drains_in_order() {
        outage_spools_then_drains_in_order(Protocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn throttling_waits_at_least_the_collectors_delay() {
        for protocol in PROTOCOLS {
            // HTTP's Retry-After counts whole seconds; RetryInfo does not.
            let delay = match protocol {
                Protocol::Grpc => Duration::from_millis(700),
                Protocol::HttpProtobuf => Duration::from_secs(1),
            };
            let collector = Arc::new(Collector::default());
            let addr = free_addr().await;
            let server = Server::start(protocol, collector.clone(), addr).await;
            let state = tempfile::tempdir().unwrap();
            // A budget that covers the delay: throttling is waited out, not spooled.
            let options =
                Options { retry: RetryPolicy { max_elapsed: Duration::from_secs(5), ..options().retry }, ..options() };
            let (h, mut rx) = start(&config(protocol, addr, true, 1 << 20), state.path(), options);
            collector.script([Reply::Throttle(delay)]);
            submit_all(&h, [0]).await;
            assert_eq!(receipt(&mut rx).await.outcome, Outcome::Acked, "{protocol:?}");
            let seen = collector.seen();
            assert_eq!(seen.iter().map(|s| s.signal).collect::<Vec<_>>(), ["metrics", "metrics", "logs"]);
            let waited = seen[1].at - seen[0].at;
            assert!(waited >= delay, "{protocol:?}: waited {waited:?}, asked for {delay:?}");
            assert_eq!(collector.metrics_numbers(), [0]);
            let c = h.shutdown().await;
            assert_eq!((c.throttled, c.retries, c.batches_acked, c.spooled_batches), (1, 1, 1, 0), "{protocol:?}");
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn a_throttle_asking_for_no_wait_is_not_retried_in_a_loop() {
        for protocol in PROTOCOLS {
            let collector = Arc::new(Collector::default());
            let addr = free_addr().await;
            let server = Server::start(protocol, collector.clone(), addr).await;
            let state = tempfile::tempdir().unwrap();
            // `Retry-After: 0` / a zero RetryInfo, three times.
            let (h, mut rx) = start(&config(protocol, addr, true, 1 << 20), state.path(), options());
            collector.script([Reply::Throttle(Duration::ZERO); 3]);
            submit_all(&h, [0]).await;
            assert_eq!(receipt(&mut rx).await.outcome, Outcome::Acked, "{protocol:?}");
            let seen = collector.seen();
            assert_eq!(seen.iter().filter(|s| s.signal == "metrics").count(), 4, "{protocol:?}");
            // At least half of each backoff ceiling: 10 + 20 + 40 ms.
            let waited = seen[3].at - seen[0].at;
            assert!(waited >= Duration::from_millis(70), "{protocol:?}: three throttles in {waited:?}");
            let c = h.shutdown().await;
            assert_eq!((c.throttled, c.batches_acked, c.spooled_batches), (3, 1, 0), "{protocol:?}");
            server.stop().await;
        }
    }

    /// An outage (UNAVAILABLE, 503) and a refused token (UNAUTHENTICATED,
    /// 401: the request refused, not the data) are both retried until the
    /// batch is taken, never dropped.
    #[tokio::test]
    async fn retryable_errors_are_retried_then_succeed() {
        for protocol in PROTOCOLS {
            for reply in [Reply::Unavailable, Reply::Unauthenticated] {
                let collector = Arc::new(Collector::default());
                let addr = free_addr().await;
                let server = Server::start(protocol, collector.clone(), addr).await;
                let state = tempfile::tempdir().unwrap();
                let options = Options {
                    retry: RetryPolicy { max_elapsed: Duration::from_secs(5), ..options().retry },
                    ..options()
                };
                let (h, mut rx) = start(&config(protocol, addr, true, 1 << 20), state.path(), options);
                // Metrics fail twice; the retry sends metrics only until they
                // are in, then logs: no part is sent twice.
                collector.script([reply, reply]);
                submit_all(&h, [0]).await;
                assert_eq!(receipt(&mut rx).await.outcome, Outcome::Acked, "{protocol:?} {reply:?}");
                let seen: Vec<_> = collector.seen().iter().map(|s| s.signal).collect();
                assert_eq!(seen, ["metrics", "metrics", "metrics", "logs"], "{protocol:?} {reply:?}");
                assert_eq!((collector.metrics_numbers(), collector.logs_numbers()), (vec![0], vec![0]));
                let c = h.shutdown().await;
                assert_eq!(
                    (c.retries, c.requests, c.batches_acked, c.spooled_batches, c.permanent_failures),
                    (2, 4, 1, 0, 0),
                    "{protocol:?} {reply:?}"
                );
                server.stop().await;
            }
        }
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_and_counted() {
        for protocol in PROTOCOLS {
            let (reply, status) = (Reply::InvalidArgument, ["gRPC INVALID_ARGUMENT", "HTTP 400"]);
            let collector = Arc::new(Collector::default());
            let addr = free_addr().await;
            let server = Server::start(protocol, collector.clone(), addr).await;
            let state = tempfile::tempdir().unwrap();
            let (h, mut rx) = start(&config(protocol, addr, true, 1 << 20), state.path(), options());
            collector.script([reply]);
            submit_all(&h, [0, 1]).await;
            let r = receipt(&mut rx).await;
            let want = status[usize::from(protocol == Protocol::HttpProtobuf)];
            match &r.outcome {
                Outcome::Rejected { status, message } => {
                    assert_eq!(status, want);
                    assert_eq!(message, "malformed data point");
                }
                other => panic!("{protocol:?} {reply:?}: {other:?}"),
            }
            assert_eq!(r.watermark, 0);
            // The next batch is unaffected.
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: 1, outcome: Outcome::Acked });
            let seen: Vec<_> = collector.seen().iter().map(|s| s.signal).collect();
            assert_eq!(seen, ["metrics", "metrics", "logs"], "{protocol:?} {reply:?}: tried once, not retried");
            let c = h.shutdown().await;
            assert_eq!((c.permanent_failures, c.retries, c.spooled_batches, c.batches_acked), (1, 0, 0, 1));
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn spool_bound_drops_oldest_restart_picks_up_the_rest_and_corrupt_files_are_set_aside() {
        let protocol = Protocol::Grpc;
        let addr = free_addr().await; // nobody listens: the collector is down
        let state = tempfile::tempdir().unwrap();
        let size = |n| {
            let b = batch(n);
            spool::encode_file(&b.metrics, &b.logs).len() as u64
        };
        // Room for exactly the newest three files (batch n grows with n).
        let bound = size(3) + size(4) + size(5);
        let dropped = size(0) + size(1) + size(2);
        let (h, mut rx) = start(&config(protocol, addr, true, bound), state.path(), options());
        submit_all(&h, 0..6).await;
        for n in 0..6 {
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: n, outcome: Outcome::Spooled });
        }
        let started = Instant::now();
        let c = h.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(3), "shutdown is bounded");
        assert_eq!((c.spooled_batches, c.spool_dropped_batches, c.spool_dropped_bytes), (6, 3, dropped));
        assert_eq!((c.spool_files, c.spool_bytes), (3, bound));
        assert_eq!(c.batches_acked, 0);

        // Damage the oldest file left (batch 3) while the agent is stopped.
        let dir = state.path().join("spool");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 3);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&files[0], bytes).unwrap();

        // Restart with the collector up: batches 4 and 5 arrive, 3 is set aside.
        let collector = Arc::new(Collector::default());
        let server = Server::start(protocol, collector.clone(), addr).await;
        let (h, mut rx) = start(&config(protocol, addr, true, bound), state.path(), options());
        assert_eq!(h.health().snapshot().spool_files, 3, "picked up the previous run's files");
        collector.wait_for("the two good files", |c| c.logs.lock().unwrap().len() == 2).await;
        assert_eq!(collector.metrics_numbers(), [4, 5]);
        assert_eq!(collector.logs_numbers(), [4, 5]);
        submit_all(&h, [6]).await;
        assert_eq!(receipt(&mut rx).await, Receipt { watermark: 6, outcome: Outcome::Acked });
        let c: ExportCounters = h.shutdown().await;
        assert_eq!((c.spool_corrupt_files, c.batches_acked, c.spool_files, c.spool_bytes), (1, 3, 0, 0));
        assert_eq!(std::fs::read_dir(dir.join("corrupt")).unwrap().count(), 1, "set aside, not lost");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_flushes_what_is_queued_within_the_flush_timeout() {
        let addr = free_addr().await; // collector down
        let state = tempfile::tempdir().unwrap();
        // A long retry budget: only shutdown can cut it short.
        let options =
            Options { retry: RetryPolicy { max_elapsed: Duration::from_secs(600), ..options().retry }, ..options() };
        let (h, mut rx) = start(&config(Protocol::Grpc, addr, true, 1 << 20), state.path(), options);
        submit_all(&h, 0..3).await;
        let started = Instant::now();
        let c = h.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        for n in 0..3 {
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: n, outcome: Outcome::Spooled });
        }
        assert_eq!((c.spooled_batches, c.spool_files, c.batches_acked), (3, 3, 0));
    }

    /// `export.ca_file`: a collector whose certificate comes from a private
    /// CA is reached over TLS once its CA is trusted, by both transports;
    /// without it the handshake fails (a retryable failure: the batch goes
    /// to the spool) and the collector sees nothing.
    #[tokio::test]
    async fn tls_with_a_private_ca_needs_ca_file() {
        let id = self_signed();
        for protocol in PROTOCOLS {
            let collector = Arc::new(Collector::default());
            let addr = free_addr().await;
            let server = Server::start_with(protocol, collector.clone(), addr, Some(&id)).await;
            let mut cfg = config(protocol, addr, true, 1 << 20);
            cfg.endpoint = format!("https://{addr}");

            let untrusting = tempfile::tempdir().unwrap();
            let (h, mut rx) = start(&cfg, untrusting.path(), options());
            submit_all(&h, [0]).await;
            assert_eq!(receipt(&mut rx).await.outcome, Outcome::Spooled, "{protocol:?} without the CA");
            let c = h.shutdown().await;
            assert!(c.retryable_failures >= 1 && c.last_success.is_none(), "{protocol:?}: {c:?}");
            assert!(collector.seen().is_empty(), "{protocol:?}: a request got through an untrusted TLS server");

            cfg.ca_pem = Some(id.cert.clone().into_bytes());
            let trusting = tempfile::tempdir().unwrap();
            let (h, mut rx) = start(&cfg, trusting.path(), options());
            submit_all(&h, [1]).await;
            assert_eq!(receipt(&mut rx).await, Receipt { watermark: 1, outcome: Outcome::Acked }, "{protocol:?}");
            assert_eq!(collector.metrics_numbers(), [1]);
            assert_eq!(collector.logs_numbers(), [1]);
            assert_eq!(collector.seen()[0].headers.get("authorization").map(String::as_str), Some(TOKEN));
            let c = h.shutdown().await;
            assert_eq!((c.batches_acked, c.retryable_failures), (1, 0), "{protocol:?}");
            server.stop().await;
        }
    }
}
