//! Mutual TLS end to end, over real sockets: the `querywatch agent`
//! binary (`--once`, over a real csvlog fixture) against a collector that
//! requires client certificates (`[receive] tls_client_ca`). With
//! `[export] tls_cert`/`tls_key` from the collector's client CA its data
//! gets in, over gRPC and over HTTP; without a certificate nothing does —
//! the handshake fails, no request is counted, and the agent spools the
//! batch for later.

// A test: a failed unwrap is a failed test, with the error.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use querywatch_collector::config::{Config, Overrides, RawConfig};

use crate::support::fixtures_dir;

/// A CA, the collector's certificate and an agent's, all PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let signed = |name: &str, sans: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &issuer).unwrap();
        (write(&format!("{name}.pem"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
    };
    let server = signed("collector", &["localhost", "127.0.0.1"]);
    let client = signed("agent", &["agent-1"]);
    Pki { ca: write("ca.pem", ca.pem()), server, client }
}

#[test]
fn agents_with_a_client_certificate_get_in_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let raw: RawConfig = toml::from_str(&format!(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n\
         tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [detect]\ninterval = \"1h\"\n",
        pki.server.0.display().to_string(),
        pki.server.1.display().to_string(),
        pki.ca.display().to_string(),
    ))
    .unwrap();
    let collector =
        rt.block_on(querywatch_collector::serve::start(Config::resolve(raw, &Overrides::default()).unwrap())).unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    fs::copy(fixtures_dir().join("pg15/postgresql.csv"), logs.join("postgresql.csv")).unwrap();

    let run = |name: &str, protocol: &str, port: u16, with_cert: bool| {
        let state = dir.path().join(format!("state-{name}"));
        let mut text = format!(
            "node = {name:?}\nstate_dir = {state:?}\n[logs]\ndirectory = {logs:?}\npattern = \"postgresql.csv\"\n\
             start_at = \"beginning\"\n[export]\nendpoint = \"https://127.0.0.1:{port}\"\nprotocol = {protocol:?}\n\
             bearer_token = \"t0ken\"\ntimeout = \"3s\"\nca_file = {ca:?}\n",
            state = state.display().to_string(),
            logs = logs.display().to_string(),
            ca = pki.ca.display().to_string(),
        );
        if with_cert {
            text.push_str(&format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                pki.client.0.display().to_string(),
                pki.client.1.display().to_string()
            ));
        }
        let config = dir.path().join(format!("{name}.toml"));
        fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_querywatch"))
            .args(["agent", "--once", "--config"])
            .arg(&config)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .output()
            .unwrap();
        (out, state)
    };
    let requests = || {
        let s = collector.shared.ingest.snapshot();
        (s.requests.grpc_metrics + s.requests.grpc_logs, s.requests.http_metrics + s.requests.http_logs)
    };
    let (grpc, http) = (collector.grpc.unwrap().port(), collector.otlp_http.unwrap().port());

    // Without a client certificate: refused in the handshake, spooled.
    for (name, protocol, port) in [("no-cert-grpc", "grpc", grpc), ("no-cert-http", "http/protobuf", http)] {
        let (out, state) = run(name, protocol, port, false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(requests(), (0, 0), "{name}: a request got through without a certificate:\n{stderr}");
        let spooled = fs::read_dir(state.join("spool")).map(|d| d.count()).unwrap_or(0);
        assert!(spooled > 0, "{name}: the refused batch was not spooled:\n{stderr}");
    }

    // With one from the client CA: accepted, both ways.
    let (out, _) = run("mtls-grpc", "grpc", grpc, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (g, h) = requests();
    assert!(g >= 1 && h == 0, "gRPC with a certificate: {:?}\n{stderr}", (g, h));
    let (out, _) = run("mtls-http", "http/protobuf", http, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (_, h) = requests();
    assert!(h >= 1, "HTTP with a certificate: {h}\n{stderr}");
    let s = collector.shared.ingest.snapshot();
    assert!(s.data_points_accepted > 0, "{s:?}");
    assert_eq!(s.rejected.unauthenticated, 0, "{s:?}");
    rt.block_on(collector.stop());
}
