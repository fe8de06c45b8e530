//! TLS handshakes on threads of their own, never on the routing thread.
//!
//! A handshake is a burst of public-key crypto (hundreds of µs); run on the
//! node's routing thread, a reconnect storm of thousands of clients would
//! stall every established flow behind it. So an accepted connection moves
//! to the handshake pool ([`HANDSHAKE_THREADS`] threads, one per core),
//! handshakes there, and comes back registered with the routing thread's
//! reactor, so after the handshake its reads and writes cost what they cost
//! before. How many handshakes run at once is bounded by the doors' permits
//! ([`super::accept`]); a handshake whose caller gives up (its deadline
//! passed, the node stops) is aborted. The pool runs at a lower priority
//! ([`HANDSHAKE_NICE`]) than the routing thread.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Most threads of the handshake pool (one per core up to this).
pub const HANDSHAKE_THREADS: usize = 8;
/// Nice value of the handshake threads: when a storm of handshakes and the
/// routing of established flows want the same cores, the routing thread
/// (nice 0, ten times the weight) wins, and the handshakes take what is left.
pub const HANDSHAKE_NICE: i32 = 10;

/// The pool, or `None` when its threads cannot start (e.g. a container's
/// process limit): handshakes then run where they are accepted, as before.
static POOL: LazyLock<Option<Runtime>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, HANDSHAKE_THREADS))
        .thread_name("sipmesh-tls")
        .on_thread_start(|| {
            // Per thread on Linux (PRIO_PROCESS with a thread id); lowering
            // one's own priority needs no privilege, so failing is only logged.
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), HANDSHAKE_NICE) {
                tracing::warn!(error = %e, "cannot lower the priority of a TLS handshake thread");
            }
        })
        .enable_all()
        .build();
    match pool {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the TLS handshake pool; handshakes run on the routing thread");
            None
        }
    }
});

/// A TCP stream that can move between runtimes: registered with the reactor
/// of the runtime that polls it, parked (a plain socket) while it moves.
#[derive(Debug)]
pub struct PoolStream(State);

#[derive(Debug)]
enum State {
    Live(TcpStream),
    Parked(std::net::TcpStream),
    /// Only while a move failed half-way; every operation then fails.
    Gone,
}

impl From<TcpStream> for PoolStream {
    fn from(tcp: TcpStream) -> PoolStream {
        PoolStream(State::Live(tcp))
    }
}

impl PoolStream {
    /// Leave the current runtime's reactor.
    fn park(&mut self) -> io::Result<()> {
        if let State::Live(_) = self.0 {
            let State::Live(tcp) = std::mem::replace(&mut self.0, State::Gone) else {
                unreachable!("checked above")
            };
            self.0 = State::Parked(tcp.into_std()?);
        }
        Ok(())
    }

    /// Register with the reactor of the runtime this is called on.
    fn unpark(&mut self) -> io::Result<()> {
        if let State::Parked(_) = self.0 {
            let State::Parked(std) = std::mem::replace(&mut self.0, State::Gone) else {
                unreachable!("checked above")
            };
            self.0 = State::Live(TcpStream::from_std(std)?);
        }
        Ok(())
    }

    fn live(&mut self) -> io::Result<&mut TcpStream> {
        match &mut self.0 {
            State::Live(tcp) => Ok(tcp),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream is between runtimes",
            )),
        }
    }

    /// The underlying stream, while it is registered.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.0 {
            State::Live(tcp) => Some(tcp),
            _ => None,
        }
    }
}

impl AsyncRead for PoolStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.live() {
            Ok(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for PoolStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.live() {
            Ok(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.live() {
            Ok(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.live() {
            Ok(tcp) => Pin::new(tcp).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.live() {
            Ok(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Aborts the pool task when the caller stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The server side of a TLS handshake on `tcp`, run on the handshake pool;
/// the stream comes back registered with the caller's runtime.
pub async fn accept(acceptor: TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream<PoolStream>> {
    let mut stream = PoolStream::from(tcp);
    let Some(pool) = POOL.as_ref() else {
        return acceptor.accept(stream).await;
    };
    stream.park()?;
    let task = AbortOnDrop(pool.spawn(async move {
        stream.unpark()?;
        let mut tls = acceptor.accept(stream).await?;
        tls.get_mut().0.park()?;
        Ok::<_, io::Error>(tls)
    }));
    let mut tls = match (&mut { task }.0).await {
        Ok(done) => done?,
        Err(e) => return Err(io::Error::other(format!("handshake task: {e}"))),
    };
    tls.get_mut().0.unpark()?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["fe1.contoso.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let provider = crate::trust::material::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// The handshake runs on a pool thread, the stream then works on the
    /// caller's (single-threaded) runtime both ways, including bytes the
    /// client sent right after its Finished.
    #[actix_rt::test]
    async fn handshake_on_the_pool_then_traffic_on_the_caller() {
        let (server, client) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("fe1.contoso.test").unwrap();
                let mut tls = tokio_rustls::TlsConnector::from(client)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                tls.write_all(b"OPTIONS sip:fe1 SIP/2.0\r\n").await.unwrap();
                let mut answer = [0u8; 8];
                tls.read_exact(&mut answer).await.unwrap();
                answer
            })
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let caller = std::thread::current().id();
        let mut tls = accept(TlsAcceptor::from(server), tcp).await.unwrap();
        assert_eq!(std::thread::current().id(), caller);
        assert!(tls.get_ref().0.tcp().is_some(), "registered again after the move");
        let mut request = [0u8; 25];
        tls.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"OPTIONS sip:fe1 SIP/2.0\r\n");
        tls.write_all(b"SIP/2.0 ").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(&peer.join().unwrap(), b"SIP/2.0 ");
    }

    /// A client that never finishes its handshake: dropping the caller's
    /// future (its deadline) aborts the pool task and closes the socket.
    #[actix_rt::test]
    async fn an_abandoned_handshake_is_aborted() {
        let (server, _) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            accept(TlsAcceptor::from(server), tcp),
        )
        .await;
        assert!(r.is_err(), "the silent client's handshake does not finish");
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "closed once aborted: {closed:?}"
        );
    }
}
