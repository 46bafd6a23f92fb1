//! The migration send thread (`ferry_migration`): pre-copy rounds over the dirty log, then
//! pause, device quiesce, the saved state and the switchover, on TCP (TLS 1.3 or the PSK
//! channel) or a Unix socket. It talks to a peer over the network, so it gets the socket and
//! the VM-state ioctls, and no way to open files.

use super::common;
use super::ioctls;
use super::rules::{any, arg_in, ioctl_in, Allow};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend(common::spawn_threads());
    v.extend([
        arg_in(
            SYS_socket,
            0,
            vec![AF_UNIX as u64, AF_INET as u64, AF_INET6 as u64],
            "the connection to the destination",
        ),
        any(SYS_connect, "connecting to the destination"),
        any(SYS_setsockopt, "TCP_NODELAY and buffer sizes on the stream"),
        any(SYS_getsockopt, "socket errors"),
        any(SYS_getsockname, "logging the local end"),
        any(SYS_getpeername, "logging the peer"),
        any(SYS_fcntl, "blocking mode of the stream"),
        any(SYS_poll, "waiting for the stream"),
        any(SYS_ppoll, "waiting for the stream"),
        any(SYS_read, "the destination's answers; eventfds"),
        any(SYS_recvfrom, "the destination's answers"),
        any(SYS_sendto, "memory pages and state"),
        any(SYS_sendmsg, "memory pages and state"),
        any(SYS_shutdown, "closing the stream"),
        any(SYS_epoll_ctl, "quiescing devices: the device loop's fds"),
        any(
            SYS_pread64,
            "host residency from /proc/self/pagemap (opened by the main thread): pages never \
             touched are sent as zero without reading them",
        ),
        any(
            SYS_io_uring_enter,
            "quiescing the disks: in-flight block I/O is completed before the state is saved",
        ),
        ioctl_in(
            {
                let mut r = ioctls::kvm_vm_state();
                r.extend(ioctls::kvm_dirty_log_setup());
                r.extend(ioctls::tty_and_fd());
                r
            },
            "dirty log rounds (GET/CLEAR_DIRTY_LOG, slots with LOG_DIRTY_PAGES) and the \
             VM-wide state at switchover (irqchip, PIT, clock)",
        ),
    ]);
    v
}
