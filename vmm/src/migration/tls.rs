//! TLS 1.3 with mutual certificates for migration over TCP (rustls, ring provider).
//!
//! Both sides present a certificate signed by the CA the other side was given (`--tls-ca`): the
//! destination admits only sources holding such a certificate, and the source sends the guest's
//! memory only to a destination whose certificate names the host it dialled. Only TLS 1.3 and
//! only AES-GCM suites (AES-NI and carry-less multiply make them cost little next to the copy);
//! no session tickets, no resumption and no early data, so nothing recorded can be replayed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::transport::Channel;

/// The three PEM files of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that signed the peer's certificate.
    pub ca: PathBuf,
}

/// Loaded credentials: the files are read once, when the command or request is taken, so a
/// missing or bad file fails before any connection.
#[derive(Clone, Debug)]
pub struct TlsCredentials {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

fn bad(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl TlsCredentials {
    pub fn load(files: &TlsFiles) -> Result<Self, String> {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| bad(&files.cert, "--tls-cert", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&files.cert, "--tls-cert", e))?;
        if chain.is_empty() {
            return Err(bad(&files.cert, "--tls-cert", "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| bad(&files.key, "--tls-key", e))?;
        let mut roots = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&files.ca)
            .map_err(|e| bad(&files.ca, "--tls-ca", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&files.ca, "--tls-ca", e))?;
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(bad(&files.ca, "--tls-ca", "no usable CA certificate"));
        }
        let creds = Self {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
        };
        // Build both configurations once so a key that does not match its certificate is
        // reported now.
        creds.server_config()?;
        creds.client_config()?;
        Ok(creds)
    }

    fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = aes_gcm_only();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("--tls-ca: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(Arc::new(config))
    }

    fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut config = ClientConfig::builder_with_provider(aes_gcm_only())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(Arc::new(config))
    }

    /// The destination's side of the handshake; returns once the peer is authenticated.
    pub fn accept(&self, sock: TcpStream) -> io::Result<TlsChannel> {
        let conn = ServerConnection::new(self.server_config().map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
        TlsChannel::handshake(rustls::Connection::Server(conn), sock)
    }

    /// The source's side: `host` is the name (or address) the destination's certificate must
    /// carry.
    pub fn connect(&self, host: &str, sock: TcpStream) -> io::Result<TlsChannel> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::other(format!("{host:?} is not a valid TLS server name: {e}"))
        })?;
        let conn = ClientConnection::new(self.client_config().map_err(io::Error::other)?, name)
            .map_err(io::Error::other)?;
        TlsChannel::handshake(rustls::Connection::Client(conn), sock)
    }
}

/// ring's TLS 1.3 AES-GCM suites only (ChaCha20 is slower where AES-NI exists), AES-128 first:
/// it does 10 AES rounds to AES-256's 14, which shows on a stream of gigabytes, and 128-bit keys
/// are not the weak point of a session whose handshake is X25519/P-256.
fn aes_gcm_only() -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

/// An established TLS connection over TCP.
pub struct TlsChannel {
    conn: rustls::Connection,
    sock: TcpStream,
}

impl TlsChannel {
    fn handshake(mut conn: rustls::Connection, mut sock: TcpStream) -> io::Result<Self> {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        }
        // Anything the handshake left to send (the client's Finished).
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        Ok(Self { conn, sock })
    }
}

impl TlsChannel {
    /// Sends whatever TLS records are pending (the same steps as `rustls::Stream`, on the
    /// client-or-server `Connection`).
    fn complete_prior_io(&mut self) -> io::Result<()> {
        if self.conn.is_handshaking() || self.conn.wants_write() {
            self.conn.complete_io(&mut self.sock)?;
        }
        Ok(())
    }
}

impl Read for TlsChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.complete_prior_io()?;
        while self.conn.wants_read() {
            if self.conn.complete_io(&mut self.sock)?.0 == 0 {
                // The socket ended: whatever was decrypted is still readable; after that the
                // reader reports a clean close or an unexpected end.
                break;
            }
        }
        self.conn.reader().read(buf)
    }
}

impl Write for TlsChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.complete_prior_io()?;
        let n = self.conn.writer().write(buf)?;
        // An error here surfaces on the next call, as with rustls::Stream.
        let _ = self.conn.complete_io(&mut self.sock);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.complete_prior_io()?;
        self.conn.writer().flush()?;
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

impl Channel for TlsChannel {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                break;
            }
        }
    }
}
