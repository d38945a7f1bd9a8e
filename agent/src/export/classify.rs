//! What a failed export means for the batch, classified the way
//! opentelemetry-rust's OTLP exporter does (and the OTLP specification asks):
//!
//! - **retryable**: the collector may accept the same data later — gRPC
//!   CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
//!   DATA_LOSS; HTTP 429, 502, 503, 504; no answer at all (refused, reset,
//!   timed out).
//! - **throttled**: retryable, and the collector said how long to wait —
//!   RESOURCE_EXHAUSTED or UNAVAILABLE with a `google.rpc.RetryInfo` detail
//!   (UNAVAILABLE + RetryInfo is what the OTLP/gRPC spec's throttling section
//!   prescribes, and what the querywatch collector sends), HTTP 429 or
//!   503 with `Retry-After` (seconds or an HTTP date). Capped at 10 minutes
//!   like opentelemetry-rust, so a bogus header cannot park the agent.
//! - **permanent**: the same bytes will be refused again — every other gRPC
//!   code (INVALID_ARGUMENT, UNKNOWN, INTERNAL, …; RESOURCE_EXHAUSTED
//!   without RetryInfo) and every other HTTP status (400, 413, 500, …).
//!
//! Two departures, on purpose:
//!
//! - A gRPC status that tonic made up on this side of the wire (it carries
//!   a source error: a broken connection, an h2 reset mapped to INTERNAL or
//!   UNKNOWN) is retryable whatever its code. The collector never answered,
//!   so nothing says it would refuse the data, and a collector killed
//!   mid-request must not cost us the batch.
//! - A refusal of the *request* rather than of the data is retryable:
//!   UNAUTHENTICATED, PERMISSION_DENIED and UNIMPLEMENTED; HTTP 401, 403
//!   and 404. A wrong or rotated token, or a proxy that does not route the
//!   path yet, is fixed outside the agent, and then the same bytes are
//!   taken; dropped, every interval until the fix was lost (and its log
//!   offsets committed). Retried, the batches wait in the bounded spool.

use std::error::Error as _;
use std::time::{Duration, SystemTime};
use tonic_types::StatusExt;

/// Longest wait a collector can ask for.
pub(crate) const MAX_THROTTLE: Duration = Duration::from_secs(600);

/// Why one request failed, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Try again after a backoff.
    Retryable { reason: String },
    /// Try again after at least `delay`.
    Throttled { delay: Duration, reason: String },
    /// Do not try again: drop the batch and count it.
    Permanent { status: String, message: String },
}

impl Failure {
    pub(crate) fn retryable(reason: impl Into<String>) -> Failure {
        Failure::Retryable { reason: reason.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retryable { reason } => write!(f, "{reason}"),
            Failure::Throttled { delay, reason } => write!(f, "{reason} (retry after {delay:?})"),
            Failure::Permanent { status, message } => write!(f, "{status}: {message}"),
        }
    }
}

/// A tonic status as the client received it.
pub fn grpc_status(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let code = status.code();
    let reason = || format!("gRPC {}: {}", code_name(code), status.message());
    if status.source().is_some() {
        return Failure::Retryable { reason: reason() };
    }
    match code {
        Code::ResourceExhausted => match status.get_details_retry_info().and_then(|r| r.retry_delay) {
            Some(delay) => Failure::Throttled { delay: delay.min(MAX_THROTTLE), reason: reason() },
            None => permanent_grpc(status),
        },
        Code::Unavailable => match status.get_details_retry_info().and_then(|r| r.retry_delay) {
            Some(delay) => Failure::Throttled { delay: delay.min(MAX_THROTTLE), reason: reason() },
            None => Failure::Retryable { reason: reason() },
        },
        Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::OutOfRange | Code::DataLoss => {
            Failure::Retryable { reason: reason() }
        }
        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => {
            Failure::Retryable { reason: refused_request(&reason()) }
        }
        _ => permanent_grpc(status),
    }
}

fn permanent_grpc(status: &tonic::Status) -> Failure {
    Failure::Permanent { status: format!("gRPC {}", code_name(status.code())), message: status.message().to_owned() }
}

/// The canonical name operators know from grpc-go and the spec
/// (`INVALID_ARGUMENT`), from tonic's variant name (`InvalidArgument`).
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// An HTTP response with a non-2xx `status`. `message` is what the body
/// said (the `google.rpc.Status` message, or text).
pub fn http_status(status: u16, retry_after: Option<&str>, message: String, now: SystemTime) -> Failure {
    let reason = || format!("HTTP {status}: {message}");
    match status {
        429 | 503 => match retry_after.and_then(|v| parse_retry_after(v, now)) {
            Some(delay) => Failure::Throttled { delay, reason: reason() },
            None => Failure::Retryable { reason: reason() },
        },
        502 | 504 => Failure::Retryable { reason: reason() },
        401 | 403 | 404 => Failure::Retryable { reason: refused_request(&reason()) },
        _ => Failure::Permanent { status: format!("HTTP {status}"), message },
    }
}

/// The reason of a refused request (see the module documentation), with
/// what to check.
fn refused_request(reason: &str) -> String {
    format!(
        "{reason} (the collector refused the request, not the data: check [export] endpoint and its token; \
         batches are kept and sent again)"
    )
}

/// A request that got no HTTP response (or a broken one).
pub fn http_error(e: &reqwest::Error) -> Failure {
    if e.is_builder() {
        // Our request could not be built: sending it again will not help.
        return Failure::Permanent { status: "HTTP request".into(), message: e.to_string() };
    }
    // Refused, reset, timed out, TLS failure: the collector never said no.
    Failure::Retryable { reason: querywatch_wire::error_chain(e) }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_THROTTLE))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic::{Code, Status};
    use tonic_types::ErrorDetails;

    fn kind(f: &Failure) -> &'static str {
        match f {
            Failure::Retryable { .. } => "retryable",
            Failure::Throttled { .. } => "throttled",
            Failure::Permanent { .. } => "permanent",
        }
    }

    #[test]
    fn grpc_codes() {
        let cases = [
            (Code::Unavailable, "retryable"),
            (Code::DeadlineExceeded, "retryable"),
            (Code::Aborted, "retryable"),
            (Code::Cancelled, "retryable"),
            (Code::OutOfRange, "retryable"),
            (Code::DataLoss, "retryable"),
            (Code::ResourceExhausted, "permanent"),
            (Code::InvalidArgument, "permanent"),
            (Code::Unauthenticated, "retryable"),
            (Code::PermissionDenied, "retryable"),
            (Code::Unimplemented, "retryable"),
            (Code::Internal, "permanent"),
            (Code::Unknown, "permanent"),
        ];
        for (code, want) in cases {
            assert_eq!(kind(&grpc_status(&Status::new(code, "x"))), want, "{code:?}");
        }
        let throttled = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert!(
            matches!(grpc_status(&throttled), Failure::Throttled { delay, .. } if delay == Duration::from_millis(1500))
        );
        let huge = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(86_400))),
        );
        assert!(matches!(grpc_status(&huge), Failure::Throttled { delay, .. } if delay == MAX_THROTTLE));
        // The OTLP/gRPC throttling signal (and the querywatch collector's).
        let unavailable = Status::with_error_details(
            Code::Unavailable,
            "queue full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        );
        assert!(
            matches!(grpc_status(&unavailable), Failure::Throttled { delay, .. } if delay == Duration::from_secs(1))
        );
        let p = grpc_status(&Status::new(Code::InvalidArgument, "bad point"));
        assert_eq!(p, Failure::Permanent { status: "gRPC INVALID_ARGUMENT".into(), message: "bad point".into() });
        let r = grpc_status(&Status::new(Code::Unauthenticated, "bad token"));
        assert!(r.to_string().contains("bad token") && r.to_string().contains("token"), "{r}");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn a_status_made_on_this_side_of_the_wire_is_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let local = Status::from_error(Box::new(io));
        assert!(local.source().is_some());
        assert_eq!(kind(&grpc_status(&local)), "retryable", "{local:?}");
    }

    #[test]
    fn http_statuses() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let k = |s, ra| kind(&http_status(s, ra, "m".into(), now));
        assert_eq!(k(429, None), "retryable");
        assert_eq!(k(429, Some("3")), "throttled");
        assert_eq!(k(503, Some("3")), "throttled");
        assert_eq!(k(503, Some("soon")), "retryable");
        for s in [502, 503, 504] {
            assert_eq!(k(s, None), "retryable", "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(k(s, None), "retryable", "{s}: the request was refused, not the data");
        }
        for s in [400, 413, 500, 501, 302] {
            assert_eq!(k(s, None), "permanent", "{s}");
        }
        assert!(matches!(http_status(429, Some(" 7 "), String::new(), now),
            Failure::Throttled { delay, .. } if delay == Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert!(matches!(http_status(429, Some(&date), String::new(), now),
            Failure::Throttled { delay, .. } if delay == Duration::from_secs(42)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert!(matches!(http_status(503, Some(&past), String::new(), now),
            Failure::Throttled { delay, .. } if delay == Duration::ZERO));
        assert!(matches!(http_status(429, Some("99999"), String::new(), now),
            Failure::Throttled { delay, .. } if delay == MAX_THROTTLE));
    }
}
