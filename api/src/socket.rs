//! The API socket: stale-socket replacement, mode 0600, listen only once private.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::ApiError;

/// Pending connections the kernel queues before the API thread accepts them.
const BACKLOG: libc::c_int = 128;

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket file.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ApiError::Socket(path.into(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.into()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(path.into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ApiError::Socket(path.into(), e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::Socket(path.into(), e)),
    }
}

fn last_error(path: &Path) -> ApiError {
    ApiError::Socket(path.into(), io::Error::last_os_error())
}

/// Binds a listening, non-blocking, close-on-exec Unix stream socket at `path` with mode 0600.
///
/// The socket is chmod-ed between `bind` and `listen`: until `listen`, connects are refused,
/// so no other user can ever get a connection in, whatever the umask.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    clear_stale(path)?;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ApiError::BadPath(path.into()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the returned fd is checked and then owned by `fd`.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(last_error(path));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` lies within it.
    let rc = unsafe {
        libc::bind(
            raw,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_error(path));
    }
    let cpath = CString::new(bytes).map_err(|_| ApiError::BadPath(path.into()))?;
    // SAFETY: `cpath` is a valid NUL-terminated string.
    if unsafe { libc::chmod(cpath.as_ptr(), 0o600) } != 0 {
        let err = last_error(path);
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    // SAFETY: `raw` is a bound socket owned by `fd`.
    if unsafe { libc::listen(raw, BACKLOG) } != 0 {
        let err = last_error(path);
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    Ok(UnixListener::from(fd))
}
