//! iSCSI session threads (`ferry_iscsiN`, one per LUN): the initiator's socket to the target,
//! login (with CHAP), command PDUs, and reconnecting with a new login when the target restarts.
//! It parses what the network sends, so it gets sockets to the target and nothing on files.

use super::common;
use super::rules::{any, arg_in, ioctl_in, Allow};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend([
        arg_in(
            SYS_socket,
            0,
            vec![AF_INET as u64, AF_INET6 as u64],
            "a new TCP connection when the session reconnects",
        ),
        any(SYS_connect, "reconnecting to the portal"),
        any(
            SYS_setsockopt,
            "TCP_NODELAY, keepalive and timeouts on the connection",
        ),
        any(SYS_getsockopt, "the result of a non-blocking connect"),
        any(SYS_fcntl, "non-blocking connect with a timeout"),
        any(SYS_poll, "waiting for the socket and the request eventfd"),
        any(SYS_ppoll, "waiting for the socket and the request eventfd"),
        any(SYS_read, "PDUs; the request eventfd"),
        any(SYS_readv, "PDUs with data segments"),
        any(SYS_recvfrom, "PDUs"),
        any(SYS_sendto, "PDUs"),
        any(SYS_sendmsg, "PDUs with data segments"),
        any(SYS_shutdown, "ending a connection"),
        ioctl_in(vec![FIONBIO], "std's set_nonblocking on the connection"),
    ]);
    v
}
