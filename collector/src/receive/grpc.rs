//! OTLP/gRPC: the `MetricsService` and `LogsService` export calls of
//! `opentelemetry-proto`, served by tonic, gzip accepted, each request
//! taken as bytes ([`Raw`]).
//!
//! The token is checked by an interceptor, which runs on the headers
//! before tonic reads the body: an unauthenticated sender costs no
//! decoding. tonic enforces the size limit itself
//! (`max_decoding_message_size`, on the message as sent and as inflated),
//! but answers a too-long message with OUT_OF_RANGE, which the OTLP
//! specification lists as retryable: a sender would retry an oversized
//! batch forever. It also answers a message it cannot decode (bad
//! protobuf, bad gzip, a truncated body) with INTERNAL. A response layer
//! rewrites both to what the specification means: RESOURCE_EXHAUSTED
//! without `RetryInfo` (permanent) and INVALID_ARGUMENT. Our own handlers
//! never answer OUT_OF_RANGE or INTERNAL, so the rewrite cannot hit them.
//!
//! Throttling is UNAVAILABLE with a `google.rpc.RetryInfo` detail, as the
//! specification's "OTLP/gRPC Throttling" says (RESOURCE_EXHAUSTED with
//! RetryInfo would do too, but UNAVAILABLE is retryable for every client).

use super::counters::{IngestCounters, Reason, Signal, Transport};
use super::ingest::{Ingest, Refused};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// When the interceptor saw the request: the start of its handling time.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// The token check and request count, before the body is read.
#[derive(Clone)]
pub(crate) struct Gate {
    ingest: Arc<Ingest>,
    signal: Signal,
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.ingest.counters.request(Transport::Grpc, self.signal);
        let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
        self.ingest.authorize(auth).map_err(status)?;
        req.extensions_mut().insert(Arrived(Instant::now()));
        Ok(req)
    }
}

/// One export service served by hand rather than by the generated server:
/// the generated one decodes the whole request into prost structs before
/// the handler runs. Ingest wants the bytes: metrics are decoded straight
/// from them (`querywatch_wire::otlp::decode_metrics_bytes`), and both
/// signals' decoding cost is reckoned before anything is built
/// ([`Ingest::afford`]). tonic still does the framing, gzip, size limit
/// and response encoding.
pub(crate) struct Raw<R> {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    path: &'static str,
    export: fn(&Ingest, &[u8]) -> Result<R, Refused>,
}

// By hand: a derive would require `R: Clone`.
impl<R> Clone for Raw<R> {
    fn clone(&self) -> Self {
        Raw { ingest: self.ingest.clone(), ..*self }
    }
}

const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

pub(crate) type MetricsRaw = Raw<ExportMetricsServiceResponse>;
pub(crate) type LogsRaw = Raw<ExportLogsServiceResponse>;

impl tonic::server::NamedService for MetricsRaw {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl tonic::server::NamedService for LogsRaw {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl<R: Message + Send + 'static> Service<http::Request<tonic::body::Body>> for Raw<R> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != self.path {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let mut gzip = EnabledCompressionEncodings::default();
        gzip.enable(CompressionEncoding::Gzip);
        let mut grpc = tonic::server::Grpc::new(RawCodec(PhantomData))
            .apply_compression_config(gzip, gzip)
            .apply_max_message_size_config(Some(self.max_request_bytes), None);
        let export = Export { ingest: self.ingest.clone(), export: self.export };
        Box::pin(async move { Ok(grpc.unary(export, req).await) })
    }
}

struct Export<R> {
    ingest: Arc<Ingest>,
    export: fn(&Ingest, &[u8]) -> Result<R, Refused>,
}

impl<R: Message + Send + 'static> tonic::server::UnaryService<Bytes> for Export<R> {
    type Response = R;
    type Future = std::future::Ready<Result<Response<R>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let start = request.extensions().get::<Arrived>().map_or_else(Instant::now, |a| a.0);
        let body = request.into_inner();
        self.ingest.counters.bytes(body.len());
        let result = (self.export)(&self.ingest, &body);
        self.ingest.counters.latency(start.elapsed());
        std::future::ready(result.map(Response::new).map_err(status))
    }
}

/// Request as bytes, response as the prost message `R`.
struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R: Message + Send + 'static> tonic::codec::Codec for RawCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = RawCodec<R>;
    type Decoder = RawCodec<R>;

    fn encoder(&mut self) -> RawCodec<R> {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> RawCodec<R> {
        RawCodec(PhantomData)
    }
}

impl<R: Message> tonic::codec::Encoder for RawCodec<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows as needed, so encoding cannot run out of room.
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl<R> tonic::codec::Decoder for RawCodec<R> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

pub(crate) type MetricsServer = InterceptedService<MetricsRaw, Gate>;
pub(crate) type LogsServer = InterceptedService<LogsRaw, Gate>;

/// The two services, size-limited, gzip in and out, behind the gate.
pub(crate) fn services(ingest: &Arc<Ingest>, max_request_bytes: usize) -> (MetricsServer, LogsServer) {
    let gate = |signal| Gate { ingest: ingest.clone(), signal };
    let metrics =
        Raw { ingest: ingest.clone(), max_request_bytes, path: METRICS_EXPORT, export: Ingest::metrics_bytes };
    let logs = Raw { ingest: ingest.clone(), max_request_bytes, path: LOGS_EXPORT, export: Ingest::logs_bytes };
    (InterceptedService::new(metrics, gate(Signal::Metrics)), InterceptedService::new(logs, gate(Signal::Logs)))
}

/// A refusal as a gRPC status.
fn status(r: Refused) -> Status {
    let code = match r.reason {
        Reason::Unauthenticated => Code::Unauthenticated,
        Reason::TooLarge => Code::ResourceExhausted,
        Reason::Malformed => Code::InvalidArgument,
        Reason::Throttled => Code::Unavailable,
        Reason::Unsupported => Code::Unimplemented,
        Reason::Timeout => Code::Unavailable,
    };
    match r.retry_after {
        Some(delay) => Status::with_error_details(code, r.message, ErrorDetails::with_retry_info(Some(delay))),
        None => Status::new(code, r.message),
    }
}

/// The response rewrite described in the module documentation; counts
/// what tonic refused before our handlers ran.
pub(crate) fn fix_status(
    counters: &IngestCounters,
    mut resp: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    use axum::http::HeaderValue;
    let headers = resp.headers_mut();
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) else {
        return resp;
    };
    let message = headers.get("grpc-message").map(|v| v.as_bytes()).unwrap_or_default();
    match Code::from_i32(code) {
        Code::OutOfRange => {
            counters.rejected(Reason::TooLarge);
            headers.insert("grpc-status", HeaderValue::from(Code::ResourceExhausted as i32));
        }
        // tonic's "size limit exceeded while decompressing"; our own
        // RESOURCE_EXHAUSTED (too many resources) is counted where made.
        Code::ResourceExhausted if contains(message, b"size%20limit") || contains(message, b"size limit") => {
            counters.rejected(Reason::TooLarge);
        }
        Code::Internal => {
            counters.rejected(Reason::Malformed);
            headers.insert("grpc-status", HeaderValue::from(Code::InvalidArgument as i32));
        }
        _ => {}
    }
    resp
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
