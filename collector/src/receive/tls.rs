//! TLS for both listeners, from a certificate chain and a key in PEM files.
//! rustls with the ring provider, like the rest of the workspace (tonic
//! `tls-ring`, reqwest `rustls-tls`): one crypto provider, no aws-lc.
//!
//! gRPC gets the PEM bytes (tonic builds its own rustls configuration);
//! HTTP gets the connections of [`handshakes`]. Handshakes run in their
//! own tasks with a timeout, so a client that connects and says nothing
//! holds neither the accept loop nor, past the timeout, a slot.
//!
//! With `tls_client_ca` (mutual TLS) both listeners require a client
//! certificate that chains to one of its CA certificates (rustls'
//! `WebPkiClientVerifier`; tonic uses the same verifier): a client without
//! one, or with one from another CA, fails the handshake and never sends
//! a request.

use super::conn::Guarded;
use super::{ReceiveError, TlsFiles};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};
use tokio_rustls::server::TlsStream;

/// Longest a client may take to finish its handshake (both listeners).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files, read and checked.
pub(crate) struct Pem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// CA certificates client certificates must chain to (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

pub(crate) fn read(files: &TlsFiles) -> Result<Pem, ReceiveError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ReceiveError::Tls { path: path.to_owned(), reason: e.to_string() })
    };
    let client_ca = match &files.client_ca {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| ReceiveError::ClientCa { path: path.to_owned(), reason: e.to_string() })?,
        ),
        None => None,
    };
    Ok(Pem { cert: read(&files.cert)?, key: read(&files.key)?, client_ca })
}

/// A rustls server configuration for HTTP/1.1 from the PEM files.
pub(crate) fn server_config(files: &TlsFiles, pem: &Pem) -> Result<Arc<ServerConfig>, ReceiveError> {
    let bad = |path: &Path, reason: String| ReceiveError::Tls { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| bad(&files.key, format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    let builder = match (&files.client_ca, &pem.client_ca) {
        (Some(path), Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots(path, ca)?), provider)
                .build()
                .map_err(|e| ReceiveError::ClientCa { path: path.clone(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, format!("certificate and key do not make a TLS identity: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of `tls_client_ca`, every one of them usable.
fn client_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, ReceiveError> {
    let bad = |reason: String| ReceiveError::ClientCa { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM CA certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Does the TLS handshake of every connection from `plain`, each in a
/// task of its own with a timeout, and hands on those that complete. A
/// handshake in progress holds its connection slot (the connection
/// limit bounds handshakes too), so a client that connects and says
/// nothing costs one slot for at most [`HANDSHAKE_TIMEOUT`].
pub(crate) fn handshakes(
    mut plain: mpsc::Receiver<Guarded<TcpStream>>,
    config: Arc<ServerConfig>,
) -> mpsc::Receiver<TlsStream<Guarded<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, ready) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                c = plain.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                // The server is gone: dropping `plain` stops accepting.
                () = tx.closed() => return,
            };
            let (acceptor, handoff) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A failed or slow handshake (no certificate, a wrong one,
                // plain text) is the client's problem: drop it.
                if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    let _ = handoff.send(tls).await;
                }
            });
        }
    });
    ready
}
