//! The two OTLP transports behind one pair of calls, `send_metrics` and
//! `send_logs`, each one request that the collector either acknowledges
//! (with an optional partial-success count) or fails with a classified
//! [`Failure`].
//!
//! - OTLP/gRPC: tonic's generated `MetricsServiceClient`/`LogsServiceClient`
//!   over one lazily connected channel (it connects on first use and
//!   reconnects by itself, so a collector that is down at start is just a
//!   retryable failure). gzip via gRPC message compression.
//! - OTLP/HTTP protobuf: `POST {endpoint}/v1/metrics` and `/v1/logs` with
//!   reqwest's async client. The body is gzipped by hand (reqwest's `gzip`
//!   feature only decompresses responses), and a gzipped response is
//!   inflated by hand for the same reason.
//!
//! TLS for `https://` endpoints is rustls with the ring provider and the
//! webpki (Mozilla) roots compiled in, for both transports: nothing to
//! install in a slim container image, one crypto provider in the binary.
//! A collector with a certificate from a private CA is trusted through
//! `export.ca_file` (PEM), added to those roots for both transports.
//! With `export.tls_cert`/`tls_key` the agent presents a client
//! certificate (mutual TLS), again for both transports.

use super::ExportError;
use super::classify::{self, Failure};
use crate::config::{ExportConfig, Protocol};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use std::io::{Read, Write};
use std::time::SystemTime;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// An accepted request: how many items the collector still rejected
/// (partial success) and what it said about them.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    pub rejected: u64,
    pub message: String,
}

pub(crate) enum Transport {
    /// Boxed: tonic's endpoint is large, and the enum lives once per agent.
    Grpc(Box<Grpc>),
    Http(Http),
}

impl Transport {
    /// Validates everything about the configuration that can be checked
    /// without a network: the endpoint, the headers, TLS setup.
    pub(crate) fn new(config: &ExportConfig) -> Result<Transport, ExportError> {
        // Parsed once here for both transports, so a broken certificate or
        // key is named as such (tonic would report it as a TLS error).
        if let Some(id) = &config.client_identity {
            reqwest::Identity::from_pem(&[id.cert_pem.as_slice(), b"\n", id.key_pem.as_slice()].concat())
                .map_err(|e| ExportError::ClientCert(format!("{e} ({})", error_chain(&e))))?;
        }
        match config.protocol {
            Protocol::Grpc => Grpc::new(config).map(|g| Transport::Grpc(Box::new(g))),
            Protocol::HttpProtobuf => Http::new(config).map(Transport::Http),
        }
    }

    pub(crate) async fn send_metrics(&mut self, req: &ExportMetricsServiceRequest) -> Result<Accepted, Failure> {
        match self {
            Transport::Grpc(g) => g.send_metrics(req).await,
            Transport::Http(h) => {
                let body = h.post(Signal::Metrics, req.encode_to_vec()).await?;
                let partial = ExportMetricsServiceResponse::decode(&body[..]).ok().and_then(|r| r.partial_success);
                Ok(partial.map_or_else(Accepted::default, |p| accepted(p.rejected_data_points, p.error_message)))
            }
        }
    }

    pub(crate) async fn send_logs(&mut self, req: &ExportLogsServiceRequest) -> Result<Accepted, Failure> {
        match self {
            Transport::Grpc(g) => g.send_logs(req).await,
            Transport::Http(h) => {
                let body = h.post(Signal::Logs, req.encode_to_vec()).await?;
                let partial = ExportLogsServiceResponse::decode(&body[..]).ok().and_then(|r| r.partial_success);
                Ok(partial.map_or_else(Accepted::default, |p| accepted(p.rejected_log_records, p.error_message)))
            }
        }
    }
}

fn accepted(rejected: i64, message: String) -> Accepted {
    Accepted { rejected: u64::try_from(rejected).unwrap_or(0), message }
}

fn endpoint_error(config: &ExportConfig, reason: impl ToString) -> ExportError {
    ExportError::Endpoint { endpoint: config.endpoint.clone(), reason: reason.to_string() }
}

/// The causes of `e`, joined: reqwest's own message is often just
/// "builder error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// A TLS set-up error, blamed on the files that were given: tonic and
/// reqwest parse certificates and keys only when they build their
/// clients, and their errors do not say which file was wrong.
fn tls_error(config: &ExportConfig, e: &dyn std::error::Error) -> ExportError {
    let reason = format!("{e} ({})", error_chain(e));
    match (&config.ca_pem, &config.client_identity) {
        (Some(_), None) => ExportError::CaFile(reason),
        (None, Some(_)) => ExportError::ClientCert(reason),
        (Some(_), Some(_)) => ExportError::Tls(reason),
        (None, None) => endpoint_error(config, reason),
    }
}

fn header_error(name: &str, reason: impl ToString) -> ExportError {
    ExportError::Header { name: name.to_owned(), reason: reason.to_string() }
}

pub(crate) struct Grpc {
    endpoint: Endpoint,
    /// Made on first use: creating a channel spawns its worker task, which
    /// needs the runtime, and construction should not.
    channel: Option<Channel>,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    gzip: bool,
}

impl Grpc {
    fn new(config: &ExportConfig) -> Result<Grpc, ExportError> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| endpoint_error(config, e))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if config.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(pem) = &config.ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let Some(id) = &config.client_identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(&id.cert_pem, &id.key_pem));
            }
            // tonic parses the certificates here: a broken one is a
            // configuration error now, not a failure at every export.
            endpoint = endpoint.tls_config(tls).map_err(|e| tls_error(config, &e))?;
        }
        let mut metadata = Vec::new();
        for (name, value) in &config.headers {
            // gRPC metadata keys are lower case; HTTP/2 would reject others.
            let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| header_error(name, e))?;
            let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|e| header_error(name, e))?;
            metadata.push((key, value));
        }
        Ok(Grpc { endpoint, channel: None, metadata, gzip: config.gzip })
    }

    fn channel(&mut self) -> Channel {
        self.channel.get_or_insert_with(|| self.endpoint.connect_lazy()).clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        for (k, v) in &self.metadata {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        req
    }

    async fn send_metrics(&mut self, req: &ExportMetricsServiceRequest) -> Result<Accepted, Failure> {
        let mut client = MetricsServiceClient::new(self.channel());
        if self.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        // tonic takes the message by value; the clone is what lets a failed
        // attempt be retried or spooled (a few KB per interval).
        let response = client.export(self.request(req.clone())).await.map_err(|s| classify::grpc_status(&s))?;
        let partial = response.into_inner().partial_success;
        Ok(partial.map_or_else(Accepted::default, |p| accepted(p.rejected_data_points, p.error_message)))
    }

    async fn send_logs(&mut self, req: &ExportLogsServiceRequest) -> Result<Accepted, Failure> {
        let mut client = LogsServiceClient::new(self.channel());
        if self.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        let response = client.export(self.request(req.clone())).await.map_err(|s| classify::grpc_status(&s))?;
        let partial = response.into_inner().partial_success;
        Ok(partial.map_or_else(Accepted::default, |p| accepted(p.rejected_log_records, p.error_message)))
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Metrics,
    Logs,
}

pub(crate) struct Http {
    client: reqwest::Client,
    metrics_url: reqwest::Url,
    logs_url: reqwest::Url,
    gzip: bool,
}

impl Http {
    fn new(config: &ExportConfig) -> Result<Http, ExportError> {
        let base = config.endpoint.trim_end_matches('/');
        let url = |path: &str| {
            let url = reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| endpoint_error(config, e))?;
            match url.scheme() {
                "http" | "https" if url.host().is_some() => Ok(url),
                _ => Err(endpoint_error(config, "needs http:// or https:// and a host")),
            }
        };
        let (metrics_url, logs_url) = (url("/v1/metrics")?, url("/v1/logs")?);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let key = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| header_error(name, e))?;
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|e| header_error(name, e))?;
            headers.insert(key, value);
        }
        headers
            .insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/x-protobuf"));
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // The collector closes an HTTP/1 connection that carries no
            // request for 30 s (its slowloris guard). Dropping our idle
            // connections before that means a request never goes out on a
            // connection the collector is closing at that very moment.
            .pool_idle_timeout(std::time::Duration::from_secs(20))
            .use_rustls_tls();
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ExportError::CaFile(e.to_string()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(id) = &config.client_identity {
            let pem = [id.cert_pem.as_slice(), b"\n", id.key_pem.as_slice()].concat();
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| ExportError::ClientCert(e.to_string()))?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| match (&config.ca_pem, &config.client_identity) {
            (None, None) => ExportError::HttpClient(e.to_string()),
            _ => tls_error(config, &e),
        })?;
        Ok(Http { client, metrics_url, logs_url, gzip: config.gzip })
    }

    /// POSTs one protobuf body; the response body of a 2xx answer.
    async fn post(&self, signal: Signal, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let url = match signal {
            Signal::Metrics => self.metrics_url.clone(),
            Signal::Logs => self.logs_url.clone(),
        };
        let mut request = self.client.post(url);
        let body = if self.gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
            gzip(&body)
        } else {
            body
        };
        let response = request.body(body).send().await.map_err(|e| classify::http_error(&e))?;
        let status = response.status();
        let gzipped = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let retry_after =
            response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A 2xx whose body breaks off was still accepted: the body only
        // carries the optional partial-success details.
        let bytes = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let bytes = if gzipped { gunzip(&bytes).unwrap_or_default() } else { bytes };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(classify::http_status(status.as_u16(), retry_after.as_deref(), error_message(&bytes), SystemTime::now()))
    }
}

/// What an error body says: OTLP/HTTP servers send a `google.rpc.Status`;
/// anything else is shown as (shortened) text.
fn error_message(body: &[u8]) -> String {
    if let Ok(status) = tonic_types::pb::Status::decode(body)
        && !status.message.is_empty()
    {
        return status.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), Compression::default());
    // Writing into a Vec cannot fail; an error here would be a flate2 bug,
    // and sending the body uncompressed would then lie in content-encoding.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::QueryText;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn config(endpoint: &str, protocol: Protocol) -> ExportConfig {
        ExportConfig {
            endpoint: endpoint.into(),
            protocol,
            headers: BTreeMap::from([("Authorization".into(), "Bearer t".into())]),
            timeout: Duration::from_secs(1),
            gzip: true,
            query_text: QueryText::Masked,
            spool_max_bytes: 1 << 20,
            ca_pem: None,
            client_identity: None,
        }
    }

    #[test]
    fn a_broken_ca_certificate_is_a_configuration_error() {
        let broken = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n".to_vec();
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut c = config("https://collector.example:4317", p);
            c.ca_pem = Some(broken.clone());
            let err = Transport::new(&c).err().unwrap();
            assert!(matches!(err, ExportError::CaFile(_)), "{p:?}: {err}");
        }
    }

    #[test]
    fn a_broken_client_certificate_is_a_configuration_error() {
        let broken = crate::config::ClientIdentity {
            cert_pem: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            key_pem: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        };
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut c = config("https://collector.example:4317", p);
            c.client_identity = Some(broken.clone());
            let err = Transport::new(&c).err().unwrap();
            assert!(matches!(err, ExportError::ClientCert(_)), "{p:?}: {err}");
            assert!(err.to_string().contains("export.tls_cert"), "{err}");
        }
    }

    #[test]
    fn bad_endpoints_and_headers_are_configuration_errors() {
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            assert!(Transport::new(&config("http://127.0.0.1:4317", p)).is_ok());
            assert!(Transport::new(&config("https://collector.example:4317", p)).is_ok());
            let err = Transport::new(&config("http://exa mple:4317", p)).err().unwrap();
            assert!(matches!(err, ExportError::Endpoint { .. }), "{err}");
            let mut c = config("http://127.0.0.1:4317", p);
            c.headers.insert("x-bad".into(), "line\nbreak".into());
            let err = Transport::new(&c).err().unwrap();
            assert!(matches!(err, ExportError::Header { .. }), "{err}");
        }
    }

    #[test]
    fn gzip_round_trip_and_error_bodies() {
        let data = b"hello hello hello hello".repeat(10);
        assert_eq!(gunzip(&gzip(&data)).unwrap(), data);
        let status = tonic_types::pb::Status { code: 3, message: "bad metric".into(), details: vec![] };
        assert_eq!(error_message(&status.encode_to_vec()), "bad metric");
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(error_message("x".repeat(300).as_bytes()).chars().count(), 201);
    }
}
