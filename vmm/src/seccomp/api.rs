//! The API thread (`ferry-api`): hyper on a current-thread tokio runtime serving the
//! Firecracker-compatible HTTP API on a Unix socket. It parses what any client with access to
//! the socket sends, and hands validated requests to the controller over a channel; it never
//! touches the VM, files or the network beyond its own socket.

use super::common;
use super::ioctls;
use super::rules::{any, ioctl_in, Allow};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend([
        any(SYS_epoll_create1, "tokio's reactor, created on this thread"),
        any(
            SYS_epoll_ctl,
            "tokio registers the listener and connections",
        ),
        any(SYS_epoll_wait, "tokio waits for readiness"),
        any(SYS_epoll_pwait, "tokio waits for readiness (p variant)"),
        any(SYS_eventfd2, "tokio's waker, created with the runtime"),
        any(SYS_accept4, "accepting API connections"),
        any(SYS_read, "request bytes; the waker eventfd"),
        any(SYS_recvfrom, "request bytes"),
        any(SYS_sendto, "response bytes"),
        any(SYS_sendmsg, "response bytes"),
        any(SYS_shutdown, "closing a connection"),
        any(
            SYS_fcntl,
            "tokio and std set non-blocking and close-on-exec",
        ),
        any(
            SYS_getsockopt,
            "SO_PEERCRED and socket errors of a connection",
        ),
        any(SYS_setsockopt, "connection options"),
        any(SYS_getsockname, "tokio reads a socket's address"),
        any(SYS_getpeername, "tokio reads a connection's peer"),
        any(SYS_timerfd_create, "tokio's timer driver"),
        any(SYS_timerfd_settime, "tokio's timer driver"),
        any(
            SYS_statx,
            "the socket path is checked when the server stops",
        ),
        any(
            SYS_unlink,
            "the socket path is removed when the server stops",
        ),
        any(
            SYS_unlinkat,
            "the socket path is removed when the server stops",
        ),
        ioctl_in(ioctls::tty_and_fd(), "FIONBIO on sockets (std, mio)"),
    ]);
    v
}
