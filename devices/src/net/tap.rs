//! `tap=NAME`: a tap interface through `/dev/net/tun`.
//!
//! Each queue pair is one open of `/dev/net/tun` attached with TUNSETIFF
//! (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, plus IFF_MULTI_QUEUE for several queues). An existing
//! tap is attached to; a missing one is created by that call, lives as long as ferry holds it,
//! and is brought up. ferry never configures addresses, bridges or routes: that is the
//! operator's (or orchestrator's) job.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{open_error, setup_queue_fd, sys, sysfs_dir, NetError};

const TUN_PATH: &str = "/dev/net/tun";

/// Opens `queues` queues of tap `name`.
pub fn open(name: &str, queues: u16) -> Result<Vec<OwnedFd>, NetError> {
    let dir = sysfs_dir(name).map_err(|_| NetError::NotTap(name.to_string()))?;
    let existed = dir.exists();
    if existed {
        check_is_tap(name, &dir)?;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if queues > 1 {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut fds = Vec::with_capacity(usize::from(queues));
    for _ in 0..queues {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| open_error(Path::new(TUN_PATH), e))?;
        let fd = OwnedFd::from(file);
        sys::tun_set_iff(fd.as_fd(), name, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => NetError::Permission {
                path: format!("{TUN_PATH} (TUNSETIFF {name})"),
            },
            Some(libc::EINVAL) if queues > 1 => NetError::Queues {
                queues,
                reason: format!("tap {name} was created without IFF_MULTI_QUEUE"),
            },
            Some(libc::EINVAL) if existed => NetError::Queues {
                queues,
                reason: format!(
                    "tap {name} is multiqueue (or busy); pass its queue count with queues=N"
                ),
            },
            Some(libc::EBUSY) => NetError::Setup {
                what: "TUNSETIFF (the tap is already in use by another process)",
                name: name.to_string(),
                source: e,
            },
            _ => NetError::Setup {
                what: "TUNSETIFF",
                name: name.to_string(),
                source: e,
            },
        })?;
        setup_queue_fd(fd.as_raw_fd(), name)?;
        fds.push(fd);
    }
    if !existed {
        sys::set_link_up(name).map_err(|source| NetError::Setup {
            what: "bringing the new tap up",
            name: name.to_string(),
            source,
        })?;
    }
    Ok(fds)
}

/// A tun/tap interface has `tun_flags` in sysfs; a tap has IFF_TAP in it.
fn check_is_tap(name: &str, dir: &Path) -> Result<(), NetError> {
    let text = std::fs::read_to_string(dir.join("tun_flags"))
        .map_err(|_| NetError::NotTap(name.to_string()))?;
    let flags = i64::from_str_radix(text.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & i64::from(libc::IFF_TAP) == 0 {
        return Err(NetError::NotTap(name.to_string()));
    }
    Ok(())
}
