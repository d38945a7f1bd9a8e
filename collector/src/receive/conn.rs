//! Connection limits and timeouts for both OTLP listeners: what keeps a
//! sender that connects and says nothing, or trickles its bytes
//! (slowloris), from holding the sockets, memory and request slots that
//! well-behaved agents need.
//!
//! - At most `max_connections` connections per listener. Past it a new
//!   connection is accepted and closed at once: its client fails fast and
//!   retries (an agent spools meanwhile) instead of waiting unseen in the
//!   kernel's backlog behind whoever holds the slots.
//! - A connection on which nothing moves — no byte read or written while
//!   the server waits for one — for `idle_timeout` is closed ([`Guarded`]).
//!   The gRPC server pings its HTTP/2 clients every [`KEEPALIVE`], so a
//!   live agent's idle channel keeps moving and stays; a socket that never
//!   answers goes.
//! - HTTP/1: the request head must arrive within `header_timeout`
//!   (hyper's `header_read_timeout`, 30 s; it runs from the connection's
//!   start and from each answer, so it also closes idle HTTP/1 keep-alive
//!   connections). Hyper enforces it only with a timer,
//!   which `axum::serve` does not give it, so [`serve_http`] serves the
//!   HTTP listener itself; the body has its own timeout (`http.rs`).
//! - TLS handshakes are bounded in time (`tls.rs`, tonic's own for gRPC),
//!   and a handshake in progress holds a connection slot.
//!
//! What this cannot stop: a sender that keeps `max_connections` busy
//! connections open with real traffic. Against that, require a token and
//! client certificates (`tls_client_ca`), and keep the ports off networks
//! that untrusted hosts reach.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// Default bound of connections per listener: a fleet of hundreds of
/// agents with one connection each, and room for reconnects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a connection may sit without a byte moving.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time an HTTP/1 request head may take to arrive.
///
/// Hyper starts it when a connection opens and again after each answer,
/// so it is also the keep-alive limit of an idle HTTP/1 connection: long
/// enough for an agent that sends every 10 s to keep its connection, and
/// the agent drops idle connections after 20 s itself, so it never sends on
/// one the collector is closing.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gRPC server pings its HTTP/2 clients, well inside the
/// idle timeout.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long an unanswered ping may stay unanswered before tonic closes
/// the connection.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the server waits at shutdown for open HTTP connections to
/// finish their requests.
const DRAIN: Duration = Duration::from_secs(30);

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// HTTP/1 only: the request head's deadline.
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// A connection that holds one of its listener's slots until dropped and
/// fails with `TimedOut` once no byte moved for the idle timeout while the
/// server waited for one.
pub(crate) struct Guarded<T> {
    inner: T,
    idle: Duration,
    /// When a byte last moved. Reads and writes only store the time; the
    /// timer is re-armed lazily when it fires, so the hot path costs one
    /// clock read.
    last: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    fn new(inner: T, idle: Duration, slot: OwnedSemaphorePermit) -> Guarded<T> {
        let last = Instant::now();
        Guarded { inner, idle, last, timer: Box::pin(tokio::time::sleep_until(last + idle)), _slot: slot }
    }

    /// Called when the inner stream is not ready: `Ready(Err)` once the
    /// connection has been idle too long, else arms the timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let due = self.last + self.idle;
            if self.timer.deadline() != due {
                self.timer.as_mut().reset(due);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.last + self.idle => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection closed: nothing moved within the idle timeout",
                    ));
                }
                // Bytes moved since it was armed: arm it again.
                Poll::Ready(()) => {}
            }
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            // A client that stops reading our answers (a slow reader) is
            // as idle as one that stops sending.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts connections on `listener` in a task of its own, within the
/// limits, until the returned receiver is dropped (which closes the
/// listener). Connections past `max_connections` are closed at once.
pub(crate) fn accept(listener: TcpListener, limits: ConnLimits) -> mpsc::Receiver<Guarded<TcpStream>> {
    // A small hand-off: the server takes connections as fast as they come;
    // this only decouples the two loops.
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                // Out of file descriptors and the like: wait a little, as
                // axum's and tonic's own accept loops do, rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Full: dropping the socket closes it (see the module doc).
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if tx.send(Guarded::new(tcp, limits.idle_timeout, slot)).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Serves an axum router over HTTP/1.1 on the connections from `incoming`
/// (plain or TLS), each request head within `header_timeout`, until
/// `shutdown` resolves; then stops accepting, lets requests in progress
/// finish (at most [`DRAIN`]) and returns.
pub(crate) async fn serve_http<I>(
    mut incoming: mpsc::Receiver<I>,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            io = incoming.recv() => match io {
                Some(io) => io,
                None => break,
            },
            () = &mut shutdown => break,
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                // A failed connection (reset, timed out, bad request head)
                // is the client's problem: hyper has answered what it could.
                _ = conn.as_mut() => {}
                () = async move {
                    // The guard `wait_for` returns is not Send: drop it here.
                    let _ = stop.wait_for(|s| *s).await;
                } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Closing the hand-off stops the accept task, which closes the listener.
    drop(incoming);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that is never ready closes after the idle timeout; one on
    /// which bytes keep moving does not; the slot goes back with it.
    #[tokio::test]
    async fn idle_connections_time_out_and_busy_ones_do_not() {
        let idle = Duration::from_millis(300);
        let pool = Arc::new(Semaphore::new(2));
        let (a, mut peer) = tokio::io::duplex(64);
        let mut g = Guarded::new(a, idle, pool.clone().try_acquire_owned().unwrap());
        assert_eq!(pool.available_permits(), 1);
        // A byte every 150 ms for 600 ms, twice the idle timeout: open.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            peer.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            g.read_exact(&mut one).await.unwrap();
        }
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= idle && waited < Duration::from_secs(3), "{waited:?}");
        drop(g);
        assert_eq!(pool.available_permits(), 2, "the slot is given back with the connection");
    }
}
