//! TLS for both listeners, from a certificate chain and a key in PEM files.
//! rustls with the ring provider, like the rest of the workspace (tonic
//! `tls-ring`, reqwest `rustls-tls`): one crypto provider, no aws-lc.
//!
//! gRPC gets the PEM bytes (tonic builds its own rustls configuration);
//! HTTP gets a [`TlsListener`] for `axum::serve`. Handshakes run in their
//! own tasks with a timeout, so a client that connects and says nothing
//! holds neither the accept loop nor, past the timeout, a slot: at most
//! [`MAX_HANDSHAKES`] run at once, and accepting waits while they do.

use super::{ReceiveError, TlsFiles};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::ring};
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once.
pub(crate) const MAX_HANDSHAKES: usize = 64;
/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files, read and checked.
pub(crate) struct Pem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

pub(crate) fn read(files: &TlsFiles) -> Result<Pem, ReceiveError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ReceiveError::Tls { path: path.to_owned(), reason: e.to_string() })
    };
    Ok(Pem { cert: read(&files.cert)?, key: read(&files.key)? })
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
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, format!("certificate and key do not make a TLS identity: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted, handshaken TLS connections, for `axum::serve`.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// Stops the accept task when the listener goes.
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        // Room for the handshakes that can finish while the server is busy;
        // past that, finished handshakes wait for the server to take them.
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener { local, ready, _task: AbortOnDrop(task) })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: wait a little, as
            // axum's own accept loop does, rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handoff) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            // A failed or slow handshake is the client's problem: drop it.
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                let _ = handoff.send((tls, peer)).await;
            }
            // The slot is held until the server took the connection, so
            // connections waiting for it are bounded too.
            drop(permit);
        });
        if ready.is_closed() {
            return;
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended, which it does only when the listener is
            // dropped; never resolve, as a TCP listener would not either.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
