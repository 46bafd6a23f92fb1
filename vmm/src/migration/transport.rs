//! Migration endpoints: `tcp:HOST:PORT` or `unix:PATH`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::str::FromStr;

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

/// A connected migration stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Socket buffers big enough to keep a 10+ Gbit/s stream full between syscalls.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

impl Stream {
    pub fn connect(url: &MigrationUrl) -> io::Result<Self> {
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
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.as_fd());
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

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(timeout),
            Self::Unix(s) => s.set_read_timeout(timeout),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
                Self::Unix(UnixListener::bind(path)?, path.clone())
            }
        })
    }

    /// Waits for the one incoming migration.
    pub fn accept(&self) -> io::Result<Stream> {
        let stream = match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Self::Unix(l, _) => Stream::Unix(l.accept()?.0),
        };
        stream.tune();
        Ok(stream)
    }
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
