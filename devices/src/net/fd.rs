//! `fd=N`: a tap or macvtap fd opened by an orchestrator (libvirt style) and inherited by ferry.
//!
//! The fd is checked with TUNGETIFF (only tun/tap/macvtap fds answer it), must be a TAP (not TUN)
//! without packet information and with the vnet header, and is then duplicated (close-on-exec)
//! so ferry owns its own reference and the orchestrator's number is left alone.

use std::os::fd::{FromRawFd, OwnedFd};

use super::{setup_queue_fd, sys, NetError};

/// Validates inherited fd `fd` and returns ferry's own copy and the interface name.
pub fn adopt(fd: i32) -> Result<(OwnedFd, String), NetError> {
    let bad = |reason: String| NetError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("negative fd".into()));
    }
    // SAFETY: F_GETFD only reads the fd's flags; an unused number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(format!("{}", std::io::Error::last_os_error())));
    }
    let (name, flags) = sys::tun_get_iff(fd).map_err(|e| bad(format!("TUNGETIFF: {e}")))?;
    if flags & 0x000f != libc::IFF_TAP {
        return Err(bad(format!("{name} is a tun (layer 3) device, not a tap")));
    }
    if flags & libc::IFF_NO_PI == 0 {
        return Err(bad(format!("{name} was opened without IFF_NO_PI")));
    }
    if flags & libc::IFF_VNET_HDR == 0 {
        return Err(NetError::NoVnetHdr(fd));
    }
    // SAFETY: duplicating a valid fd; the new number is ours alone.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(bad(format!("dup: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `dup` is a fresh fd nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    setup_queue_fd(dup, &name)?;
    Ok((owned, name))
}
