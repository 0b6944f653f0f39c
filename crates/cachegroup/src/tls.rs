//! Optional TLS between members (`--group-tls-ca`, and for members that
//! serve, `--group-tls-cert` / `--group-tls-key`). The HMAC handshake of
//! [`crate::proto`] still decides who belongs to the group; TLS adds
//! encryption and lets readers check the member's certificate (issued for
//! its IP address by the given CA). Blocks from disk cannot go out with
//! sendfile over TLS; they are copied through user space instead.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Config(String),
}

/// TLS settings of one process: always a client side (the CA), a server
/// side when it serves.
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("serves", &self.server.is_some())
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn bad_file(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad_file(path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(path, "no certificate in it"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Load the CA that members' certificates are checked against and,
    /// for a member that serves, its certificate chain and key.
    pub fn load(ca: &Path, serve: Option<(&Path, &Path)>) -> Result<Tls, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs(ca)? {
            roots
                .add(c)
                .map_err(|e| bad_file(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = match serve {
            Some((cert, key)) => {
                let chain = certs(cert)?;
                let pem = read_file(key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| bad_file(key, format!("not a PEM private key: {e}")))?;
                let config = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Config(e.to_string()))?
                    .with_no_client_auth()
                    .with_single_cert(chain, key_der)
                    .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
                Some(Arc::new(config))
            }
            None => None,
        };
        Ok(Tls {
            client: Arc::new(client),
            server,
        })
    }

    /// Wrap an accepted connection (the TLS handshake runs on first use).
    pub fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let config = self
            .server
            .clone()
            .ok_or_else(|| io::Error::other("this member has no certificate to serve TLS"))?;
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Server(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Wrap a connection to `host` (an IP address or a name the member's
    /// certificate carries).
    pub fn connect(&self, host: &str, tcp: TcpStream) -> io::Result<Stream> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(self.client.clone(), name).map_err(io::Error::other)?;
        Ok(Stream::Client(Box::new(StreamOwned::new(conn, tcp))))
    }
}

/// A connection between members, in the clear or over TLS.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (timeouts; sendfile when plain).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref(),
            Stream::Client(s) => s.get_ref(),
        }
    }

    pub fn is_plain(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Server(s) => s.flush(),
            Stream::Client(s) => s.flush(),
        }
    }
}
