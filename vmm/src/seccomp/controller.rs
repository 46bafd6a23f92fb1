//! The controller (the main thread, `ferry`) and the receive thread (`ferry_receive`): they
//! build VMs (open kernels, disks, taps; create the KVM VM; map memory), answer API actions
//! (snapshots, drive swap and resize, rate limiters), and spawn every other thread. A thread
//! starts under its creator's filter and can only narrow it, so this list is the union of every
//! other kind's list plus what building and managing a VM takes. What it keeps out is what no
//! VMM needs: exec, fork, ptrace, mount, module loading, changing credentials, BPF, and the
//! ioctls of any file but KVM, tap, block devices and the terminal.

use super::common;
use super::ioctls;
use super::rules::{any, arg_in, ioctl_in, Allow, When};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend(common::spawn_threads());
    let mut all_ioctls = ioctls::kvm_system();
    all_ioctls.extend(ioctls::kvm_vm_build());
    all_ioctls.extend(ioctls::kvm_vm_state());
    all_ioctls.extend(ioctls::kvm_vcpu());
    all_ioctls.extend(ioctls::tap_setup());
    all_ioctls.extend(ioctls::blk_info());
    all_ioctls.extend(ioctls::blk_io());
    all_ioctls.extend(ioctls::tty_and_fd());
    v.extend([
        ioctl_in(
            all_ioctls,
            "creating and configuring the VM and its vCPUs, taps, block device sizes, the \
             terminal",
        ),
        // Files: kernels, initrds, disks, snapshots, CPU templates, credentials, /dev/kvm,
        // /dev/net/tun, macvtap nodes, hugetlbfs.
        any(
            SYS_openat,
            "opening kernels, disks, snapshot files, /dev/kvm, taps",
        ),
        any(SYS_open, "opening files through older libc paths"),
        any(
            SYS_read,
            "reading kernels, snapshots, credentials; eventfds",
        ),
        any(SYS_pread64, "reading a snapshot's memory file at offsets"),
        any(SYS_pwrite64, "writing snapshot memory at offsets"),
        any(SYS_readv, "reading files in pieces"),
        any(SYS_preadv, "reading files in pieces at offsets"),
        any(SYS_pwritev, "writing files in pieces at offsets"),
        any(
            SYS_lseek,
            "sparse snapshot files (SEEK_DATA/SEEK_HOLE) and file sizes",
        ),
        any(SYS_fstat, "file sizes and kinds (block device or file)"),
        any(SYS_newfstatat, "file sizes and kinds by path"),
        any(SYS_statx, "std's metadata"),
        any(SYS_stat, "metadata through older libc paths"),
        any(SYS_lstat, "symlink checks of admitted paths"),
        any(SYS_readlink, "resolving admitted paths"),
        any(SYS_readlinkat, "resolving admitted paths"),
        any(SYS_getcwd, "resolving relative paths"),
        any(SYS_getdents64, "listing a snapshot directory"),
        any(SYS_fsync, "making snapshot files durable"),
        any(SYS_fdatasync, "making snapshot files durable"),
        any(SYS_ftruncate, "sizing snapshot memory files"),
        any(SYS_fallocate, "sparse snapshot files"),
        any(SYS_mkdir, "snapshot directories"),
        any(SYS_mkdirat, "snapshot directories"),
        any(SYS_rename, "snapshot files written then renamed into place"),
        any(
            SYS_renameat,
            "snapshot files written then renamed into place",
        ),
        any(
            SYS_renameat2,
            "snapshot files written then renamed into place",
        ),
        any(SYS_unlink, "removing a stale API or migration socket"),
        any(SYS_unlinkat, "removing a stale API or migration socket"),
        Allow {
            nr: SYS_mknodat,
            when: When::Masked(2, S_IFMT as u64, S_IFCHR as u64),
            why: "a macvtap's /dev/tapN node when no udev made it (character devices only)",
        },
        Allow {
            nr: SYS_mknod,
            when: When::Masked(1, S_IFMT as u64, S_IFCHR as u64),
            why: "a macvtap's /dev/tapN node (older libc paths; character devices only)",
        },
        any(SYS_chmod, "the migration Unix socket is made 0600"),
        any(SYS_fchmod, "the migration Unix socket is made 0600"),
        any(SYS_fchmodat, "the migration Unix socket is made 0600"),
        any(SYS_umask, "sockets created with tight modes"),
        any(SYS_fcntl, "close-on-exec, non-blocking, duplicating fds"),
        any(SYS_dup, "an inherited tap fd is duplicated"),
        any(SYS_dup3, "an inherited tap fd is duplicated"),
        // Event and I/O machinery created while building.
        any(
            SYS_eventfd2,
            "ioeventfds, irqfds, completion and wake eventfds",
        ),
        any(SYS_epoll_create1, "the device event loop"),
        any(SYS_epoll_ctl, "registering device fds"),
        any(SYS_epoll_wait, "event waits"),
        any(SYS_epoll_pwait, "event waits"),
        any(SYS_timerfd_create, "rate-limiter timers"),
        any(SYS_timerfd_settime, "rate-limiter timers"),
        any(SYS_timerfd_gettime, "rate-limiter timers"),
        any(SYS_io_uring_setup, "the block I/O ring"),
        any(SYS_io_uring_enter, "the block I/O ring"),
        any(SYS_io_uring_register, "the block I/O ring's eventfd"),
        any(
            SYS_poll,
            "the controller loop waits for requests and the guest's exit",
        ),
        any(SYS_ppoll, "waits with timeouts"),
        any(SYS_rt_sigaction, "installing the vCPU kick handler"),
        // Network: iSCSI logins, migration, taps' helper sockets, the API socket.
        arg_in(
            SYS_socket,
            0,
            vec![AF_UNIX as u64, AF_INET as u64, AF_INET6 as u64],
            "API and migration sockets, iSCSI connections, the interface ioctl socket",
        ),
        any(SYS_bind, "API socket, migration listener"),
        any(SYS_listen, "API socket, migration listener"),
        any(SYS_accept4, "the incoming migration"),
        any(SYS_accept, "the incoming migration"),
        any(SYS_connect, "iSCSI portals, migration destinations"),
        any(SYS_setsockopt, "socket options"),
        any(SYS_getsockopt, "socket errors"),
        any(SYS_getsockname, "bound addresses"),
        any(SYS_getpeername, "peers"),
        any(SYS_sendto, "network writes"),
        any(SYS_recvfrom, "network reads"),
        any(SYS_sendmsg, "network writes, fd passing"),
        any(SYS_recvmsg, "network reads"),
        any(SYS_shutdown, "closing streams"),
        any(SYS_uname, "reading the host's kernel version"),
        any(SYS_sysinfo, "memory checks"),
        any(SYS_getuid, "permission checks"),
        any(SYS_geteuid, "permission checks"),
        any(SYS_getgid, "permission checks"),
        any(SYS_getegid, "permission checks"),
        any(SYS_sched_getaffinity, "CPU counts"),
    ]);
    v
}
