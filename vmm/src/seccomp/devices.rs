//! The device thread (`ferry_devices`): the event-manager loop that processes every virtio
//! queue (block, net, entropy) from guest notifications, backend completions, rate-limiter
//! timers and the serial console's stdin. It reads guest-controlled descriptors, so it gets
//! exactly the I/O calls of the backends and no way to open anything new.

use super::common;
use super::ioctls;
use super::rules::{any, arg_in, ioctl_in, Allow};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend([
        any(SYS_epoll_wait, "the event loop waits for its fds"),
        any(
            SYS_epoll_pwait,
            "the event loop waits for its fds (libc may use the p variant)",
        ),
        any(
            SYS_epoll_ctl,
            "devices register and remove fds (activation, reset, drive swap)",
        ),
        any(
            SYS_read,
            "eventfds (queue notifications, completions), stdin, tap frames",
        ),
        any(SYS_readv, "tap/macvtap frames into guest buffers"),
        any(SYS_preadv, "synchronous disk engine: reads"),
        any(SYS_pwritev, "synchronous disk engine: writes"),
        any(SYS_pread64, "synchronous disk engine: single-buffer reads"),
        any(
            SYS_pwrite64,
            "synchronous disk engine: single-buffer writes",
        ),
        any(
            SYS_fdatasync,
            "virtio-blk flush requests (synchronous engine)",
        ),
        any(
            SYS_fsync,
            "virtio-blk flush requests on backends that sync whole files",
        ),
        any(
            SYS_fallocate,
            "virtio-blk discard and write-zeroes on files",
        ),
        any(
            SYS_io_uring_enter,
            "submitting and reaping block I/O on the shared ring",
        ),
        any(SYS_timerfd_settime, "rate limiters arm their refill timer"),
        any(SYS_timerfd_gettime, "rate limiters read their timer"),
        any(
            SYS_getrandom,
            "virtio-rng fills guest buffers from the host's entropy",
        ),
        any(
            SYS_sendto,
            "the iSCSI backend hands requests to its session socket",
        ),
        any(SYS_recvfrom, "tap reads through recv on some backends"),
        any(
            SYS_shutdown,
            "a swapped-out iSCSI backend closes its connection",
        ),
        any(
            SYS_poll,
            "draining a disk's in-flight requests waits for its completion eventfd",
        ),
        any(SYS_ppoll, "the same wait through ppoll"),
        arg_in(
            SYS_socket,
            0,
            vec![AF_UNIX as u64],
            "vsock: a guest connection to <uds_path>_PORT is a new Unix socket (Unix only)",
        ),
        any(SYS_connect, "vsock: connecting to <uds_path>_PORT"),
        any(SYS_accept4, "vsock: a host client connecting to uds_path"),
        any(SYS_accept, "vsock: a host client connecting to uds_path"),
        any(SYS_getsockopt, "vsock: socket errors"),
        any(SYS_fcntl, "vsock: non-blocking host sockets"),
        any(SYS_recvmsg, "vsock: host socket reads"),
        any(SYS_sendmsg, "vsock: host socket writes"),
        any(SYS_fstat, "a swapped drive's backend checks its file"),
        any(SYS_lseek, "backends that find a file's size by seeking"),
        ioctl_in(
            ioctls::blk_io(),
            "virtio-blk discard and write-zeroes on block devices",
        ),
        ioctl_in(
            vec![FIONBIO],
            "vsock: std's set_nonblocking on an accepted host connection",
        ),
        ioctl_in(
            ioctls::tap_running(),
            "virtio-net offloads follow the driver's features; the control queue's MQ command \
             attaches and detaches multiqueue tap queues",
        ),
    ]);
    v
}
