//! The host side's Unix sockets: the listener at `uds_path`, the `CONNECT <port>\n` line a host
//! client opens with, and non-blocking connections to `<uds_path>_<port>`.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest `CONNECT <port>\n` line accepted (`CONNECT 4294967295\n` is 19 bytes).
pub const MAX_CONNECT_LINE: usize = 32;

/// Binds the listener at `path`, non-blocking. A socket file left by a process that is gone
/// (connecting to it is refused) is replaced, so a VM restored or restarted with the same path
/// works; a path some live process listens on, or any other file, is an error.
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let stale = std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) && matches!(UnixStream::connect(path),
                           Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: in use ({e})", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)?
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `<uds_path>_<port>`, where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to `path` without ever blocking the device thread: a listener whose backlog is
/// full refuses like one that is absent.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes; `fd` is a valid socket.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// A host client's first line, read byte by byte so no data after it is consumed.
#[derive(Debug, Default)]
pub struct ConnectLine {
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
}

/// Where reading the line stands.
#[derive(Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// Not complete yet (the socket had no more bytes).
    Partial,
    /// `CONNECT <port>\n`.
    Connect(u32),
    /// Anything else, EOF or an error: the client is dropped.
    Invalid,
}

impl ConnectLine {
    pub fn read_from(&mut self, stream: &mut UnixStream) -> LineStatus {
        loop {
            let mut b = [0u8; 1];
            match stream.read(&mut b) {
                Ok(0) => return LineStatus::Invalid,
                Ok(_) => {
                    if b[0] == b'\n' {
                        return parse_connect(&self.line[..self.len]);
                    }
                    if self.len == MAX_CONNECT_LINE {
                        return LineStatus::Invalid;
                    }
                    self.line[self.len] = b[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineStatus::Partial,
                Err(_) => return LineStatus::Invalid,
            }
        }
    }
}

/// Parses `CONNECT <port>` (the newline already removed; a trailing `\r` is tolerated).
pub fn parse_connect(line: &[u8]) -> LineStatus {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return LineStatus::Invalid;
    };
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return LineStatus::Invalid;
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse().ok())
        .map_or(LineStatus::Invalid, LineStatus::Connect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), LineStatus::Connect(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), LineStatus::Connect(52));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295"),
            LineStatus::Connect(u32::MAX)
        );
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +5",
            b"connect 5",
            b"CONNECT 5 6",
        ] {
            assert_eq!(parse_connect(bad), LineStatus::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn line_is_read_without_consuming_data_after_it() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut line = ConnectLine::default();
        b.write_all(b"CONN").unwrap();
        assert_eq!(line.read_from(&mut a), LineStatus::Partial);
        b.write_all(b"ECT 7\nrest").unwrap();
        assert_eq!(line.read_from(&mut a), LineStatus::Connect(7));
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
        // Too long without a newline.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(&[b'9'; 40]).unwrap();
        assert_eq!(
            ConnectLine::default().read_from(&mut a),
            LineStatus::Invalid
        );
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_are_not() {
        let dir = std::env::temp_dir().join(format!("ferry-vsock-unix-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let live = bind_listener(&path).unwrap();
        assert!(
            bind_listener(&path).is_err(),
            "a live listener keeps its path"
        );
        drop(live);
        // The file is still there, nobody listens: replaced.
        let again = bind_listener(&path).unwrap();
        assert!(connect_nonblocking(&path).is_ok());
        assert!(connect_nonblocking(&port_path(&path, 9)).is_err());
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
