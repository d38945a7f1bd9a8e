//! OTLP/HTTP: `POST /v1/metrics` and `POST /v1/logs`, protobuf or JSON,
//! plain or gzip, answered in the request's content type (OTLP
//! specification, "OTLP/HTTP").
//!
//! Order of checks, cheapest first and before the body is read: token,
//! content type and encoding, declared length. The body is then read with
//! a hard cap, and gzip is inflated through a reader that stops one byte
//! past the limit, so neither a huge body nor a gzip bomb can allocate more
//! than `max_request_bytes` (plus the compressed bytes already held).
//!
//! Error bodies are a `google.rpc.Status` (protobuf, or its JSON mapping
//! for JSON requests) with the gRPC code that matches the HTTP status, as
//! the specification asks. Throttling is `503 Service Unavailable` with
//! `Retry-After`: the specification allows 429 or 503, and 503 is the one
//! every client retries (the Python SDK's exporter treats 429 as permanent
//! and would drop the data); the querywatch agent honours `Retry-After` on
//! both.

use super::counters::{Reason, Signal, Transport};
use super::ingest::{Format, Ingest, Refused};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flate2::read::MultiGzDecoder;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use querywatch_wire::otlp::cost;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// Longest a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

pub(crate) struct HttpState {
    pub ingest: Arc<Ingest>,
    pub max_request_bytes: usize,
}

/// The OTLP/HTTP routes. Anything else is 404; another method on an export
/// path is 405.
pub(crate) fn router(state: Arc<HttpState>, max_in_flight: usize) -> Router {
    let not_allowed = |State(st): State<Arc<HttpState>>| async move {
        st.ingest.counters.rejected(Reason::Unsupported);
        let mut r = error(Format::Protobuf, StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, "use POST", None);
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        r
    };
    Router::new()
        .route("/v1/metrics", post(metrics).fallback(not_allowed))
        .route("/v1/logs", post(logs).fallback(not_allowed))
        .fallback(|State(st): State<Arc<HttpState>>| async move {
            st.ingest.counters.rejected(Reason::Unsupported);
            error(
                Format::Protobuf,
                StatusCode::NOT_FOUND,
                Code::NotFound,
                "not an OTLP endpoint: POST to /v1/metrics or /v1/logs",
                None,
            )
        })
        // One limit across all connections: each request in flight can hold
        // up to twice `max_request_bytes` (compressed and inflated), so this
        // bounds the receiver's memory. Requests past it wait (TCP pushes
        // back on the sender) rather than being refused.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_in_flight))
        .with_state(state)
}

async fn metrics(State(st): State<Arc<HttpState>>, req: Request) -> Response {
    handle(&st, Signal::Metrics, req).await
}

async fn logs(State(st): State<Arc<HttpState>>, req: Request) -> Response {
    handle(&st, Signal::Logs, req).await
}

async fn handle(st: &HttpState, signal: Signal, req: Request) -> Response {
    let start = Instant::now();
    let ingest = &st.ingest;
    ingest.counters.request(Transport::Http, signal);
    let (parts, body) = req.into_parts();
    // Until the content type is known, errors are protobuf (the OTLP
    // default); the sender may not read them, but the status code says it.
    let format = match content_type(&parts.headers) {
        Ok(f) => f,
        Err(m) => {
            ingest.counters.rejected(Reason::Unsupported);
            return error(Format::Protobuf, StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument, &m, None);
        }
    };
    if let Err(r) = ingest.authorize(parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        return refused(format, r);
    }
    let gzip = match content_encoding(&parts.headers) {
        Ok(g) => g,
        Err(m) => {
            ingest.counters.rejected(Reason::Unsupported);
            return error(format, StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument, &m, None);
        }
    };
    let body = match read_body(st, &parts.headers, body, gzip).await {
        Ok(b) => b,
        Err(r) => return refused(format, r),
    };
    let result = match signal {
        Signal::Metrics => {
            let answer = match format {
                Format::Protobuf => ingest.metrics_bytes(&body),
                Format::Json => json::<ExportMetricsServiceRequest>(st, &body, cost::Request::Metrics)
                    .and_then(|r| ingest.metrics(r)),
            };
            answer.map(|r| {
                let partial = r.partial_success.as_ref().map(|p| (p.rejected_data_points, p.error_message.as_str()));
                respond(format, &r, "rejectedDataPoints", partial)
            })
        }
        Signal::Logs => {
            let answer = match format {
                Format::Protobuf => ingest.logs_bytes(&body),
                Format::Json => {
                    json::<ExportLogsServiceRequest>(st, &body, cost::Request::Logs).and_then(|r| ingest.logs(r))
                }
            };
            answer.map(|r| {
                let partial = r.partial_success.as_ref().map(|p| (p.rejected_log_records, p.error_message.as_str()));
                respond(format, &r, "rejectedLogRecords", partial)
            })
        }
    };
    drop(body);
    ingest.counters.latency(start.elapsed());
    result.unwrap_or_else(|r| refused(format, r))
}

/// The body, inflated, within the size limit.
async fn read_body(st: &HttpState, headers: &HeaderMap, body: Body, gzip: bool) -> Result<Bytes, Refused> {
    let limit = st.max_request_bytes;
    let too_large =
        |what: &str| st.ingest.refuse(Reason::TooLarge, format!("{what} is larger than the limit of {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        drain(body);
        return Err(too_large("the request body"));
    }
    // The body is read under a concurrency slot: a sender that trickles it
    // must not hold the slot for ever.
    let mut body = body;
    let read = async {
        let mut raw = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the request body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                if raw.len() + data.len() > limit {
                    return Ok(None);
                }
                raw.extend_from_slice(data);
            }
        }
        Ok::<_, String>(Some(raw))
    };
    let raw = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(Some(raw))) => Bytes::from(raw),
        Ok(Ok(None)) => {
            drain(body);
            return Err(too_large("the request body"));
        }
        Ok(Err(m)) => return Err(st.ingest.refuse(Reason::Malformed, m)),
        Err(_) => {
            let m = format!("the request body did not arrive within {} s; retry later", BODY_TIMEOUT.as_secs());
            return Err(st.ingest.refuse_retry_later(Reason::Timeout, m));
        }
    };
    st.ingest.counters.bytes(raw.len());
    if !gzip {
        return Ok(raw);
    }
    match gunzip(&raw, limit) {
        Ok(Some(b)) => Ok(Bytes::from(b)),
        Ok(None) => Err(too_large("the decompressed request body")),
        Err(e) => Err(st.ingest.refuse(Reason::Malformed, format!("the body is not valid gzip: {e}"))),
    }
}

/// Most of a refused body [`drain`] reads before it gives up.
const DRAIN_MAX_BYTES: usize = 64 << 20;

/// Reads and discards the rest of a refused body, in a task of its own, so
/// that the sender, still writing it, gets to read our 413 rather than a
/// broken pipe: hyper closes a connection whose request body was left
/// unread, and most clients (reqwest, the agent's, among them) read the
/// answer only once they have sent the whole body. A broken pipe looks
/// retryable to a sender; a 413 tells it not to retry. Bounded: at most
/// [`DRAIN_MAX_BYTES`] and [`BODY_TIMEOUT`], then the connection is
/// closed anyway; nothing read is kept.
fn drain(mut body: Body) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(BODY_TIMEOUT, async {
            let mut n = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                n += frame.data_ref().map_or(0, Bytes::len);
                if n > DRAIN_MAX_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// Inflates `bytes`, reading at most `limit + 1` bytes out of the decoder:
/// `None` when the result would be larger than `limit`. Concatenated gzip
/// members are read as one stream, as Go's and Python's readers do.
pub(crate) fn gunzip(bytes: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    // A first guess at the size; the reader grows it, never past the cap.
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit));
    MultiGzDecoder::new(bytes).take(cap).read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}

/// An OTLP/JSON request, once its decoding cost is known to be bearable.
fn json<M: serde::de::DeserializeOwned>(st: &HttpState, body: &[u8], request: cost::Request) -> Result<M, Refused> {
    st.ingest.afford(body, Format::Json, request)?;
    serde_json::from_slice(body)
        .map_err(|e| st.ingest.refuse(Reason::Malformed, format!("the body is not a valid OTLP/JSON message: {e}")))
}

/// A 200 answer. JSON is written here rather than by the generated serde
/// code, which writes int64 as a JSON number and an absent
/// `partialSuccess` as `null`; OTLP/JSON wants a decimal string and
/// nothing.
fn respond<M: Message>(format: Format, message: &M, rejected_key: &str, partial: Option<(i64, &str)>) -> Response {
    let body = match format {
        Format::Protobuf => message.encode_to_vec(),
        Format::Json => {
            let mut r = serde_json::json!({});
            if let Some((n, m)) = partial {
                r["partialSuccess"] = serde_json::json!({ rejected_key: n.to_string(), "errorMessage": m });
            }
            r.to_string().into_bytes()
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

fn refused(format: Format, r: Refused) -> Response {
    let (status, code) = match r.reason {
        Reason::Unauthenticated => (StatusCode::UNAUTHORIZED, Code::Unauthenticated),
        Reason::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted),
        Reason::Malformed => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
        Reason::Throttled => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
        Reason::Unsupported => (StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument),
        // Retryable for OTLP senders (429, 502, 503 and 504 are; 408 is not).
        Reason::Timeout => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
    };
    let mut resp = error(format, status, code, &r.message, r.retry_after);
    if r.reason == Reason::Unauthenticated {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// An error response: a `google.rpc.Status` body, with a `RetryInfo`
/// detail and a `Retry-After` header when the sender should come back.
fn error(format: Format, status: StatusCode, code: Code, message: &str, retry: Option<Duration>) -> Response {
    let body = match format {
        Format::Protobuf => {
            let details = retry.map_or_else(ErrorDetails::new, |d| ErrorDetails::with_retry_info(Some(d)));
            tonic::Status::with_error_details(code, message, details).details().to_vec()
        }
        Format::Json => {
            let mut s = serde_json::json!({ "code": code as i32, "message": message });
            if let Some(d) = retry {
                s["details"] = serde_json::json!([{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{}s", d.as_secs()),
                }]);
            }
            s.to_string().into_bytes()
        }
    };
    let mut resp = (status, [(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(d) = retry {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
    }
    resp
}

/// `Content-Type` → format; parameters (`; charset=utf-8`) are ignored.
fn content_type(headers: &HeaderMap) -> Result<Format, String> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(format!("missing Content-Type: use {PROTOBUF} or {JSON}"));
    };
    let media = v.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(format!("unsupported Content-Type {v:?}: use {PROTOBUF} or {JSON}"))
    }
}

/// `Content-Encoding` → gzipped or not.
fn content_encoding(headers: &HeaderMap) -> Result<bool, String> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("").trim()) {
        None | Some("") => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(e) => Err(format!("unsupported Content-Encoding {e:?}: use gzip or none")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A body that stops arriving is refused as retryable (503 with
    /// `Retry-After`, counted as `timeout`), not as bad data: a 400 made
    /// senders drop a batch that a slow link was still delivering.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_retryable() {
        use tokio_stream::StreamExt;
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let counters = Arc::new(super::super::IngestCounters::new());
        let st = HttpState { ingest: Arc::new(Ingest::new(tx, counters.clone(), None)), max_request_bytes: 1 << 20 };
        let first = tokio_stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from_static(b"\x0a\x02"))]);
        let body = Body::from_stream(first.chain(tokio_stream::pending()));
        let refusal = read_body(&st, &HeaderMap::new(), body, false).await.unwrap_err();
        assert_eq!(counters.snapshot().rejected.timeout, 1);
        let resp = refused(Format::Protobuf, refusal);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        let data = vec![7u8; 1000];
        assert_eq!(gunzip(&gz(&data), 1000).unwrap().unwrap(), data);
        assert_eq!(gunzip(&gz(&data), 999).unwrap(), None);
        let mut two = gz(b"abc");
        two.extend(gz(b"def"));
        assert_eq!(gunzip(&two, 100).unwrap().unwrap(), b"abcdef");
        assert!(gunzip(b"not gzip at all", 100).is_err());
        let z = gz(&data);
        assert!(gunzip(&z[..z.len() / 2], 10_000).is_err());
    }

    #[test]
    fn content_types_and_encodings() {
        let h = |name, v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(name, HeaderValue::from_static(v));
            m
        };
        assert_eq!(content_type(&h(header::CONTENT_TYPE, "application/x-protobuf")), Ok(Format::Protobuf));
        assert_eq!(content_type(&h(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")), Ok(Format::Json));
        assert!(content_type(&h(header::CONTENT_TYPE, "text/plain")).is_err());
        assert!(content_type(&HeaderMap::new()).is_err());
        assert_eq!(content_encoding(&HeaderMap::new()), Ok(false));
        assert_eq!(content_encoding(&h(header::CONTENT_ENCODING, "GZIP")), Ok(true));
        assert_eq!(content_encoding(&h(header::CONTENT_ENCODING, "identity")), Ok(false));
        assert!(content_encoding(&h(header::CONTENT_ENCODING, "br")).is_err());
    }
}
