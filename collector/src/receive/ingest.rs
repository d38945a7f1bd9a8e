//! What both transports do once a request is parsed: check the token,
//! decode with [`querywatch_wire::otlp`], hand the batches to the store
//! without waiting, and say what was accepted. Transport-free, so gRPC and
//! HTTP cannot drift apart in what they accept.

use super::Batch;
use super::counters::{IngestCounters, Reason, Signal};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use querywatch_wire::otlp::cost::{self, Request};
use querywatch_wire::otlp::{self, BytesError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

/// How long a throttled sender is asked to wait. Long enough for the store
/// to drain a full queue (it merges a batch in microseconds), short enough
/// that an agent does not sit on data: its next interval is seconds away.
pub(crate) const THROTTLE_DELAY: Duration = Duration::from_secs(1);

/// How a body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Protobuf,
    Json,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Protobuf => "OTLP protobuf",
            Format::Json => "OTLP/JSON",
        })
    }
}

/// A refused request: why (for the counters and the status code) and what
/// to tell the sender.
#[derive(Debug)]
pub(crate) struct Refused {
    pub reason: Reason,
    pub message: String,
    /// Ask the sender to retry after this long (throttling only).
    pub retry_after: Option<Duration>,
}

impl Refused {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Refused {
        Refused { reason, message: message.into(), retry_after: None }
    }
}

/// State shared by every request of both transports.
pub(crate) struct Ingest {
    /// A request's batches, one slot per request: an OpenTelemetry
    /// Collector's batch processor merges many agents' resources into one
    /// request, which must fit however many it holds.
    tx: mpsc::Sender<Vec<Batch>>,
    pub counters: Arc<IngestCounters>,
    token: Option<Vec<u8>>,
}

impl Ingest {
    pub(crate) fn new(tx: mpsc::Sender<Vec<Batch>>, counters: Arc<IngestCounters>, token: Option<String>) -> Ingest {
        Ingest { tx, counters, token: token.map(String::into_bytes) }
    }

    /// Checks an `Authorization` header value against the configured token
    /// (none configured: everything passes). The scheme is matched without
    /// regard to case (RFC 9110 §11.1); the token compare takes the same
    /// time wherever the first difference is.
    pub(crate) fn authorize(&self, header: Option<&[u8]>) -> Result<(), Refused> {
        let Some(want) = &self.token else { return Ok(()) };
        let refuse = |m: &str| {
            self.counters.rejected(Reason::Unauthenticated);
            Err(Refused::new(Reason::Unauthenticated, m))
        };
        let Some(header) = header else { return refuse("missing `Authorization: Bearer <token>`") };
        let Some(given) = bearer_token(header) else { return refuse("`Authorization` is not a bearer token") };
        if super::constant_time_eq(given, want) { Ok(()) } else { refuse("wrong bearer token") }
    }

    /// A protobuf `ExportMetricsServiceRequest` (gRPC, HTTP protobuf),
    /// decoded in place. The decoder reckons the cost of what it hands to
    /// prost itself (see [`Self::afford`]): a second walk over every
    /// request cost 9% of the ingest rate.
    pub(crate) fn metrics_bytes(&self, body: &[u8]) -> Result<ExportMetricsServiceResponse, Refused> {
        self.room()?;
        let parts = otlp::decode_metrics_bytes(body).map_err(|e| match e {
            BytesError::TooCostly(_) => self.refuse(Reason::TooLarge, e.to_string()),
            BytesError::Malformed(_) | BytesError::Unreadable(_) => self.refuse(Reason::Malformed, e.to_string()),
        })?;
        self.metrics_parts(parts)
    }

    /// A request already parsed (OTLP/JSON).
    pub(crate) fn metrics(&self, req: ExportMetricsServiceRequest) -> Result<ExportMetricsServiceResponse, Refused> {
        self.room()?;
        // One resource at a time: the decoder's `ignored` is per request,
        // and a batch's point count needs it per resource.
        self.metrics_parts(otlp::decode_metrics_per_resource(req))
    }

    fn metrics_parts(&self, parts: otlp::ResourceParts) -> Result<ExportMetricsServiceResponse, Refused> {
        let ignored = self.hand_off(Signal::Metrics, parts)?;
        Ok(ExportMetricsServiceResponse {
            partial_success: (ignored > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: i64::try_from(ignored).unwrap_or(i64::MAX),
                error_message: not_ours(ignored, Signal::Metrics),
            }),
        })
    }

    /// A protobuf `ExportLogsServiceRequest` (gRPC, HTTP protobuf).
    pub(crate) fn logs_bytes(&self, body: &[u8]) -> Result<ExportLogsServiceResponse, Refused> {
        self.room()?;
        self.afford(body, Format::Protobuf, Request::Logs)?;
        let req = ExportLogsServiceRequest::decode(body).map_err(|e| {
            self.refuse(Reason::Malformed, format!("the body is not a valid OTLP protobuf message: {e}"))
        })?;
        self.logs(req)
    }

    /// Refuses a body that would take far more memory to decode than its
    /// size warrants ([`cost`]): a request of empty messages. Before this
    /// check, 16 KB of gzip (16 MiB of empty data points) took the
    /// collector to 1.4 GB. Run before anything is decoded.
    pub(crate) fn afford(&self, body: &[u8], format: Format, request: Request) -> Result<(), Refused> {
        let reckoned = match format {
            Format::Protobuf => cost::protobuf(body, request).map_err(|e| e.to_string()),
            Format::Json => {
                cost::json(&mut serde_json::Deserializer::from_slice(body), request).map_err(|e| e.to_string())
            }
        };
        let cost = reckoned
            .map_err(|e| self.refuse(Reason::Malformed, format!("the body is not a valid {format} message: {e}")))?;
        cost::check(cost, body.len()).map_err(|e| self.refuse(Reason::TooLarge, e.to_string()))
    }

    pub(crate) fn logs(&self, req: ExportLogsServiceRequest) -> Result<ExportLogsServiceResponse, Refused> {
        self.room()?;
        let mut parts = Vec::with_capacity(req.resource_logs.len());
        for rl in req.resource_logs {
            let total = rl.scope_logs.iter().map(|s| len_u64(s.log_records.len())).sum();
            let one = ExportLogsServiceRequest { resource_logs: vec![rl] };
            parts.push((total, otlp::decode_logs(&one)));
        }
        let ignored = self.hand_off(Signal::Logs, parts)?;
        Ok(ExportLogsServiceResponse {
            partial_success: (ignored > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(ignored).unwrap_or(i64::MAX),
                error_message: not_ours(ignored, Signal::Logs),
            }),
        })
    }

    /// Refuses before decoding when the queue is already full: decoding is
    /// most of a request's cost, and a saturated collector should spend
    /// nothing on data it will refuse anyway. (A race with the store
    /// freeing room only costs one retry; `hand_off` checks again.)
    fn room(&self) -> Result<(), Refused> {
        if self.tx.capacity() > 0 {
            return Ok(());
        }
        Err(self.throttled())
    }

    fn throttled(&self) -> Refused {
        self.refuse_retry_later(Reason::Throttled, "the collector's ingest queue is full; retry later")
    }

    /// A refusal the sender should retry after [`THROTTLE_DELAY`].
    pub(crate) fn refuse_retry_later(&self, reason: Reason, message: impl Into<String>) -> Refused {
        let mut r = self.refuse(reason, message);
        r.retry_after = Some(THROTTLE_DELAY);
        r
    }

    /// Queues the batches of a decoded request, all or none, and returns
    /// how many items were not ours. `parts`: per resource, its item count
    /// and what the decoder made of it.
    fn hand_off(&self, signal: Signal, parts: otlp::ResourceParts) -> Result<u64, Refused> {
        let mut batches = Vec::new();
        let mut ignored = 0u64;
        for (total, decoded) in parts {
            // A request that claims to be ours and is wrong is refused
            // whole: the sender has a bug, and half a batch in the store
            // would be worse than none.
            let decoded = decoded.map_err(|e| self.refuse(Reason::Malformed, e.to_string()))?;
            ignored += decoded.ignored;
            let points = total.saturating_sub(decoded.ignored);
            // The decoder returns at most one batch per resource; should
            // that change, the count goes with the first.
            let mut points = Some(points);
            for (resource, obs) in decoded.batches {
                batches.push(Batch { resource, obs, points: points.take().unwrap_or(0) });
            }
        }
        let accepted: u64 = batches.iter().map(|b| b.points).sum();
        if !batches.is_empty() {
            // All or none, in one slot: a request that is half queued and
            // then throttled would be retried whole, and its first half
            // counted twice.
            let permit = match self.tx.try_reserve() {
                Ok(p) => p,
                Err(TrySendError::Full(())) => return Err(self.throttled()),
                Err(TrySendError::Closed(())) => {
                    // The store has stopped: the collector is shutting down.
                    // Retryable, and without a delay hint: another replica
                    // or this one after restart can take it.
                    return Err(self.refuse(Reason::Throttled, "the collector is shutting down"));
                }
            };
            let n = batches.len();
            permit.send(batches);
            self.counters.accepted(signal, accepted, ignored, n);
        } else {
            self.counters.accepted(signal, 0, ignored, 0);
        }
        Ok(ignored)
    }

    pub(crate) fn refuse(&self, reason: Reason, message: impl Into<String>) -> Refused {
        self.counters.rejected(reason);
        Refused::new(reason, message)
    }
}

fn not_ours(n: u64, signal: Signal) -> String {
    format!(
        "{n} {} are not querywatch data (unknown metric or event names or sources) and were skipped; \
         this endpoint accepts only what a querywatch agent sends",
        signal.items()
    )
}

/// `Bearer <token>` → the token.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER\tabc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b""), None);
    }

    #[test]
    fn authorize_counts_refusals() {
        let (tx, _rx) = mpsc::channel(1);
        let counters = Arc::new(IngestCounters::new());
        let ingest = Ingest::new(tx.clone(), counters.clone(), Some("s3cret".into()));
        assert!(ingest.authorize(Some(b"Bearer s3cret")).is_ok());
        assert!(ingest.authorize(Some(b"Bearer s3cre")).is_err());
        assert!(ingest.authorize(Some(b"Bearer s3cret2")).is_err());
        assert!(ingest.authorize(None).is_err());
        assert_eq!(counters.snapshot().rejected.unauthenticated, 3);
        let open = Ingest::new(tx, counters, None);
        assert!(open.authorize(None).is_ok());
    }
}
