//! The tun/tap ioctls ferry uses (linux/if_tun.h), wrapped so callers never touch `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// `struct ifreq` restricted to the name and flags members (40 bytes, like the kernel's).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> io::Result<Self> {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() >= libc::IFNAMSIZ
            || bytes.contains(&0)
            || name.contains('/')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid interface name (1 to 15 bytes, no '/')"),
            ));
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// TUNSETIFF: attaches a `/dev/net/tun` fd to interface `name` (created if missing).
pub fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = IfReq::new(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is (40 bytes).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
}

/// TUNGETIFF: the interface name and IFF_* flags of a tun/tap/macvtap fd.
pub fn tun_get_iff(fd: RawFd) -> io::Result<(String, libc::c_int)> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one ifreq into `req`; an fd that is not a tun fails with ENOTTY
    // or EBADFD and writes nothing.
    check(unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) })?;
    Ok((req.name(), libc::c_int::from(req.flags) & 0xffff))
}

fn ioctl_int(fd: RawFd, req: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
    let v = value;
    // SAFETY: these tun ioctls read one int through the pointer.
    check(unsafe { libc::ioctl(fd, req, &v) })
}

/// TUNSETVNETHDRSZ: the size of the virtio-net header prepended to every frame.
pub fn set_vnet_hdr_sz(fd: RawFd, size: usize) -> io::Result<()> {
    ioctl_int(fd, libc::TUNSETVNETHDRSZ, size as libc::c_int)
}

/// TUNSETOFFLOAD: which offloads (TUN_F_*) the reader accepts in frames it reads.
pub fn set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // The argument is passed by value, not by pointer.
    // SAFETY: TUNSETOFFLOAD takes an unsigned long value and touches no memory.
    check(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) })
}

/// TUNSETQUEUE: attaches or detaches one queue of a multiqueue tap, so the kernel stops
/// steering flows to queues the guest disabled.
pub fn set_queue_attached(fd: RawFd, attached: bool) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        }) as libc::c_short,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETQUEUE reads one ifreq.
    check(unsafe { libc::ioctl(fd, libc::TUNSETQUEUE, &mut req) })
}

/// Sets O_NONBLOCK, so neither read nor write ever stalls the device thread.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we were given; invalid fds fail with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// Sets IFF_UP on interface `name` (SIOCGIFFLAGS/SIOCSIFFLAGS on a throwaway socket).
pub fn set_link_up(name: &str) -> io::Result<()> {
    let mut req = IfReq::new(name, 0)?;
    // SAFETY: plain socket creation; closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
    let result = check(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) }).and_then(|()| {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: as above.
        check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req) })
    });
    // SAFETY: closing the socket created above.
    unsafe { libc::close(sock) };
    result
}

/// `struct ifreq` with the `ifr_mtu` member (an int at offset 16; 40 bytes).
#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

/// Sets interface `name`'s MTU (SIOCSIFMTU on a throwaway socket).
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let named = IfReq::new(name, 0)?;
    let mut req = IfReqMtu {
        name: named.name,
        mtu: libc::c_int::from(mtu),
        _pad: [0; 20],
    };
    // SAFETY: plain socket creation; closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCSIFMTU reads one ifreq, which `req` is (40 bytes).
    let result = check(unsafe { libc::ioctl(sock, libc::SIOCSIFMTU, &mut req) });
    // SAFETY: closing the socket created above.
    unsafe { libc::close(sock) };
    result
}
