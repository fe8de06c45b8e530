//! TLS as a client of a mesh port, and the certificates to do it with.
//!
//! - [`Pki`]: a CA directory made with `sipmesh::pki` (or the cluster's),
//!   issuing, revoking and writing CRLs.
//! - [`client_config`], [`tls_connect`]: a tokio-rustls client presenting a
//!   certificate (or none).
//! - [`hello_frame`], [`hello_frame_with`]: the first mesh frame.
//! - [`send`], [`read_end`] / [`ReadEnd`]: write, and see how the node ended
//!   the connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sipmesh::pki::{self, IssueOptions, Issued};
use sipmesh_actors::wire::{encode_to_vec, Frame, Hello, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA directory made with `sipmesh::pki`, issuing into distinct subdirs.
pub struct Pki {
    /// The CA directory.
    pub ca_dir: PathBuf,
    /// The CA certificate.
    pub ca_pem: PathBuf,
    root: PathBuf,
    issued: std::cell::Cell<u32>,
}

impl Pki {
    /// A new CA under `root/ca`.
    pub fn init(root: &Path, name: &str) -> Pki {
        let ca_dir = root.join("ca");
        let info = pki::init_ca(&ca_dir, name).unwrap_or_else(|e| panic!("init_ca {name}: {e}"));
        Pki {
            ca_pem: info.cert_path,
            ca_dir,
            root: root.to_owned(),
            issued: Default::default(),
        }
    }

    /// Use an existing CA directory (e.g. the cluster's), issuing under `root`.
    pub fn existing(ca_dir: &Path, ca_pem: &Path, root: &Path) -> Pki {
        Pki {
            ca_dir: ca_dir.to_owned(),
            ca_pem: ca_pem.to_owned(),
            root: root.to_owned(),
            issued: Default::default(),
        }
    }

    /// Issue into a fresh `root/issued-<k>/` so certificates with the same
    /// fqdn never overwrite each other.
    pub fn issue(&self, opts: &IssueOptions) -> Issued {
        let k = self.issued.get() + 1;
        self.issued.set(k);
        let out = self.root.join(format!("issued-{k}"));
        pki::issue(&self.ca_dir, opts, &out).unwrap_or_else(|e| panic!("issue {}: {e}", opts.fqdn))
    }

    /// Issue with default (valid mesh) options.
    pub fn issue_fqdn(&self, fqdn: &str) -> Issued {
        self.issue(&IssueOptions::new(fqdn))
    }

    /// Mark revoked (effective in the next CRL).
    pub fn revoke(&self, cert: &Issued) {
        pki::revoke(&self.ca_dir, &cert.serial).unwrap_or_else(|e| panic!("revoke {}: {e}", cert.serial));
    }

    /// Write the CRL to `out`.
    pub fn write_crl(&self, out: &Path) {
        pki::write_crl(&self.ca_dir, out).unwrap_or_else(|e| panic!("write_crl: {e}"));
    }

    /// Write a CRL to `out` whose nextUpdate is `next_update` (thisUpdate a day before it).
    pub fn write_crl_until(&self, out: &Path, next_update: time::OffsetDateTime) {
        pki::write_crl_dated(&self.ca_dir, out, next_update - time::Duration::days(1), next_update)
            .unwrap_or_else(|e| panic!("write_crl_dated: {e}"));
    }
}

/// The crypto provider every test config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read PEM certificates.
pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Read a PEM private key.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client config trusting `ca_pem` for the server and presenting `identity`
/// (or no certificate at all).
pub fn client_config(ca_pem: &Path, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca_pem) {
        roots.add(c).expect("add trust anchor");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert_path), load_key(&id.key_path))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// TCP + TLS to `addr`, verifying the server as `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("tcp connect timed out"))??;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("tls handshake timed out"))?
}

/// An encoded hello frame claiming `fqdn`.
pub fn hello_frame(fqdn: &str) -> Vec<u8> {
    hello_frame_with(fqdn, PROTOCOL_VERSION)
}

/// An encoded hello frame claiming `fqdn` and mesh protocol `protocol`.
pub fn hello_frame_with(fqdn: &str, protocol: u16) -> Vec<u8> {
    encode_to_vec(&Frame::Hello(Hello {
        protocol,
        fqdn: fqdn.to_owned(),
        topology_version: 1,
        features: 0,
    }))
    .expect("encode hello")
}

/// What a read on a connection the peer should close returned.
#[derive(Debug)]
pub enum ReadEnd {
    /// Clean EOF.
    Eof,
    /// A read error (TLS alert, reset, EOF without close_notify, …).
    Error(String),
    /// Data arrived instead: the connection was not refused.
    Data(Vec<u8>),
    /// Nothing within the deadline.
    Timeout,
}

impl ReadEnd {
    /// EOF or an error: the connection was closed by the peer.
    pub fn closed(&self) -> bool {
        matches!(self, ReadEnd::Eof | ReadEnd::Error(_))
    }
}

/// One read with a deadline.
pub async fn read_end<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, deadline: Duration) -> ReadEnd {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
        Err(_) => ReadEnd::Timeout,
        Ok(Ok(0)) => ReadEnd::Eof,
        Ok(Ok(n)) => ReadEnd::Data(buf[..n].to_vec()),
        Ok(Err(e)) => ReadEnd::Error(e.to_string()),
    }
}

/// Write `bytes` and flush; a write error is returned as text (the peer may
/// already have refused the connection).
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}
