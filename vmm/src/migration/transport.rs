//! Migration endpoints: `tcp:HOST:PORT` or `unix:PATH`, and how a stream is protected.
//!
//! Over TCP a stream is either TLS 1.3 with mutual certificates ([`super::tls`]), the
//! pre-shared-key channel ([`super::psk`]), or plain — and plain only to a loopback address
//! unless the operator says `--insecure`. A Unix socket relies on file permissions: the
//! destination creates it 0600 before it listens.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::memory::PageSink;
use super::psk::PreSharedKey;
use super::tls::{TlsCredentials, TlsFiles};

/// Where a migration stream goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUrl {
    Tcp(String),
    Unix(String),
}

impl FromStr for MigrationUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(addr) = text.strip_prefix("tcp:") {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("'{text}': expected tcp:HOST:PORT"));
            }
            return Ok(Self::Tcp(addr.to_string()));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return Err(format!("'{text}': expected unix:PATH"));
            }
            return Ok(Self::Unix(path.to_string()));
        }
        Err(format!("'{text}': expected tcp:HOST:PORT or unix:PATH"))
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// How the operator asked a stream to be protected (command line or API body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityOptions {
    pub tls: Option<TlsFiles>,
    pub psk_file: Option<PathBuf>,
    /// Allow plain TCP to or on a non-loopback address.
    pub insecure: bool,
}

/// Loaded credentials for one endpoint.
#[derive(Clone, Debug, Default)]
pub enum Security {
    #[default]
    Plain,
    Tls(TlsCredentials),
    Psk(PreSharedKey),
}

impl Security {
    /// Loads the credentials and checks they fit `url`: TLS and PSK are for TCP; plain TCP to
    /// a non-loopback address needs `insecure`.
    pub fn for_url(options: &SecurityOptions, url: &MigrationUrl) -> Result<Self, String> {
        let security = match (&options.tls, &options.psk_file) {
            (Some(_), Some(_)) => {
                return Err("give either TLS certificates or a PSK file, not both".into())
            }
            (Some(files), None) => Self::Tls(TlsCredentials::load(files)?),
            (None, Some(path)) => Self::Psk(PreSharedKey::load(path)?),
            (None, None) => Self::Plain,
        };
        match (url, &security) {
            (MigrationUrl::Unix(_), Self::Plain) => {}
            (MigrationUrl::Unix(_), _) => {
                return Err(format!(
                    "{url}: a Unix socket is protected by its file permissions; TLS and PSK are \
                     for tcp: URLs"
                ))
            }
            (MigrationUrl::Tcp(addr), Self::Plain) if !options.insecure && !is_loopback(addr) => {
                return Err(format!(
                    "{url}: plain TCP to a non-loopback address would let anyone on the path \
                     read the guest's memory (and, on a destination, send it a guest); give \
                     --tls-cert/--tls-key/--tls-ca or --psk-file, or --insecure to accept that"
                ))
            }
            _ => {}
        }
        Ok(security)
    }

    /// Authenticates an accepted connection (destination side).
    fn accept(&self, stream: Stream) -> io::Result<Stream> {
        let sock = match (self, stream) {
            (Self::Plain, stream) => return Ok(stream),
            (_, Stream::Tcp(sock)) => sock,
            (_, _) => return Err(io::Error::other("TLS and PSK need a TCP connection")),
        };
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let channel: Box<dyn Channel> = match self {
            Self::Tls(creds) => Box::new(creds.accept(sock)?),
            Self::Psk(key) => Box::new(key.accept(sock)?),
            Self::Plain => unreachable!("handled above"),
        };
        Ok(Stream::Sealed(Arc::new(Mutex::new(channel))))
    }

    /// Authenticates an outgoing connection to `url` (source side).
    fn connect(&self, stream: Stream, url: &MigrationUrl) -> io::Result<Stream> {
        let (sock, host) = match (self, stream, url) {
            (Self::Plain, stream, _) => return Ok(stream),
            (_, Stream::Tcp(sock), MigrationUrl::Tcp(addr)) => (sock, host_of(addr)),
            _ => return Err(io::Error::other("TLS and PSK need a TCP connection")),
        };
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let channel: Box<dyn Channel> = match self {
            Self::Tls(creds) => Box::new(creds.connect(&host, sock)?),
            Self::Psk(key) => Box::new(key.connect(sock)?),
            Self::Plain => unreachable!("handled above"),
        };
        Ok(Stream::Sealed(Arc::new(Mutex::new(channel))))
    }
}

/// A peer that has not finished authenticating by then is dropped: one silent connection must
/// not hold the destination's only accept for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `HOST` of `HOST:PORT`, without IPv6 brackets.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Every address `addr` resolves to is a loopback address.
fn is_loopback(addr: &str) -> bool {
    match addr.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// An authenticated, encrypted connection over TCP.
pub trait Channel: Read + Write + Send {
    fn socket(&self) -> &TcpStream;
    /// Ends the session cleanly (TLS close_notify) before the socket is shut down.
    fn close(&mut self);
}

/// A connected migration stream. A sealed stream is shared by its clones (the protocol reads
/// replies on one handle and writes on another, from one thread at a time).
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Sealed(Arc<Mutex<Box<dyn Channel>>>),
}

fn lock(channel: &Mutex<Box<dyn Channel>>) -> MutexGuard<'_, Box<dyn Channel>> {
    channel.lock().unwrap_or_else(|p| p.into_inner())
}

/// Socket buffers big enough to keep a 10+ Gbit/s stream full between syscalls.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

impl Stream {
    /// Connects to `url` and authenticates as `security` says.
    pub fn connect(url: &MigrationUrl, security: &Security) -> io::Result<Self> {
        let stream = Self::connect_plain(url)?;
        let stream = security.connect(stream, url)?;
        stream.set_read_timeout(None)?;
        Ok(stream)
    }

    fn connect_plain(url: &MigrationUrl) -> io::Result<Self> {
        let stream = match url {
            MigrationUrl::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Self::Tcp(s)
            }
            MigrationUrl::Unix(path) => Self::Unix(UnixStream::connect(path)?),
        };
        stream.tune();
        Ok(stream)
    }

    fn tune(&self) {
        let fd = self.fd();
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with a valid int option on our socket; failure only means the
            // default buffer size stays.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCKET_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
            Self::Sealed(c) => lock(c).socket().as_raw_fd(),
        }
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Sealed(c) => Self::Sealed(c.clone()),
        })
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Sealed(c) => {
                let mut c = lock(c);
                c.close();
                c.socket().shutdown(std::net::Shutdown::Both)
            }
        };
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(timeout),
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Sealed(c) => lock(c).socket().set_read_timeout(timeout),
        }
    }
}

impl PageSink for Stream {
    fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Self::Tcp(s) => Some(s.as_fd().as_raw_fd()),
            Self::Unix(s) => Some(s.as_fd().as_raw_fd()),
            Self::Sealed(_) => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
            Self::Sealed(c) => lock(c).read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
            Self::Sealed(c) => lock(c).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Sealed(c) => lock(c).flush(),
            _ => Ok(()),
        }
    }
}

/// A listening endpoint for `ferry receive`.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, String),
}

impl Listener {
    pub fn bind(url: &MigrationUrl) -> io::Result<Self> {
        Ok(match url {
            MigrationUrl::Tcp(addr) => Self::Tcp(TcpListener::bind(addr)?),
            MigrationUrl::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                if std::fs::metadata(path).is_ok() && UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                Self::Unix(bind_private_unix(path)?, path.clone())
            }
        })
    }

    /// Waits for the one incoming migration: the first connection that authenticates. A peer
    /// that fails the TLS or PSK handshake is logged and dropped, and the wait goes on, so
    /// nobody without credentials can end a planned migration by connecting first.
    pub fn accept(&self, security: &Security) -> io::Result<Stream> {
        loop {
            let (stream, peer) = match self {
                Self::Tcp(l) => {
                    let (s, peer) = l.accept()?;
                    s.set_nodelay(true)?;
                    (Stream::Tcp(s), peer.to_string())
                }
                Self::Unix(l, path) => (Stream::Unix(l.accept()?.0), path.clone()),
            };
            stream.tune();
            match security.accept(stream) {
                Ok(stream) => return Ok(stream),
                Err(e) => log::warn!("migration: refused a connection from {peer}: {e}"),
            }
        }
    }
}

/// A listening Unix socket whose file is 0600 before anyone can connect: bind, chmod, then
/// listen (a bound socket refuses connections until it listens).
fn bind_private_unix(path: &str) -> io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::ffi::OsStr::new(path).as_bytes();
    // SAFETY: sockaddr_un is plain data; zero is a valid initial value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{path}: a Unix socket path must be shorter than {} bytes",
                addr.sun_path.len()
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let private =
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    if let Err(e) = private {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(fd, 16) } < 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(owned))
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tcp_off_loopback_needs_insecure_and_unix_sockets_are_private() {
        let plain = SecurityOptions::default();
        let local: MigrationUrl = "tcp:127.0.0.1:7000".parse().unwrap();
        let remote: MigrationUrl = "tcp:0.0.0.0:7000".parse().unwrap();
        assert!(Security::for_url(&plain, &local).is_ok());
        let err = Security::for_url(&plain, &remote).unwrap_err();
        assert!(err.contains("--insecure"), "{err}");
        let insecure = SecurityOptions {
            insecure: true,
            ..Default::default()
        };
        assert!(Security::for_url(&insecure, &remote).is_ok());

        let path = std::env::temp_dir().join(format!("ferry-mig-perm-{}.sock", std::process::id()));
        let url = MigrationUrl::Unix(path.to_str().unwrap().into());
        let listener = Listener::bind(&url).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            "tcp:127.0.0.1:4000".parse(),
            Ok(MigrationUrl::Tcp("127.0.0.1:4000".into()))
        );
        assert_eq!(
            "tcp:[::1]:4000".parse(),
            Ok(MigrationUrl::Tcp("[::1]:4000".into()))
        );
        assert_eq!(
            "unix:/tmp/m.sock".parse(),
            Ok(MigrationUrl::Unix("/tmp/m.sock".into()))
        );
        for bad in [
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "unix:",
            "http://x",
            "udp:1:2",
        ] {
            assert!(bad.parse::<MigrationUrl>().is_err(), "{bad}");
        }
    }
}
