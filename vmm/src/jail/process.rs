//! The jailer's process-level steps: inherited descriptors and environment, resource limits,
//! the network namespace, daemonizing, the PID namespace and the final drop of every privilege.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::JailError;

fn os_error(what: &str) -> JailError {
    JailError::io(what.to_string(), io::Error::last_os_error())
}

/// Closes every descriptor above stderr that the jailer's parent left open, so the VMM holds
/// nothing it was not meant to (Firecracker's jailer does the same first).
pub fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: close_range on a range of descriptors this process owns; nothing in this process
    // holds one of them yet (called before anything is opened).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc/self/fd lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| JailError::io("reading /proc/self/fd".into(), e))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; the directory's own fd is already closed (EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Removes the whole environment: nothing from the jailer's caller leaks into the VMM.
pub fn clear_environment() {
    for (key, _) in std::env::vars_os() {
        // The jailer is single-threaded here (no thread was started), so nothing reads the
        // environment concurrently.
        std::env::remove_var(key);
    }
}

fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
) -> Result<(), JailError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit structure.
    if unsafe { libc::setrlimit(resource, &limit) } < 0 {
        return Err(os_error(&format!("setrlimit {name}={value}")));
    }
    Ok(())
}

/// `RLIMIT_FSIZE` (when given) and `RLIMIT_NOFILE`, soft and hard alike, so the unprivileged VMM
/// cannot raise them again.
pub fn set_limits(fsize: Option<u64>, no_file: u64) -> Result<(), JailError> {
    if let Some(fsize) = fsize {
        set_rlimit(libc::RLIMIT_FSIZE, fsize, "fsize")?;
    }
    set_rlimit(libc::RLIMIT_NOFILE, no_file, "no-file")
}

/// Joins the network namespace at `path` (e.g. `/var/run/netns/NAME`).
pub fn join_netns(path: &Path) -> Result<(), JailError> {
    let ns =
        File::open(path).map_err(|e| JailError::io(format!("--netns {}", path.display()), e))?;
    // SAFETY: setns on a descriptor we own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(os_error(&format!(
            "joining the network namespace {}",
            path.display()
        )));
    }
    Ok(())
}

/// `fork`; the parent exits 0 at once (its caller sees the jailer finish), the child goes on.
fn fork_and_leave_parent(what: &str) -> Result<(), JailError> {
    // SAFETY: the process is single-threaded, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(os_error(what)),
        0 => Ok(()),
        // SAFETY: _exit skips destructors and atexit handlers that belong to the child now.
        _ => unsafe { libc::_exit(0) },
    }
}

/// The classic double fork: the VMM ends up in a new session, not its leader (so it can never
/// gain a controlling terminal), with standard input, output and error on `/dev/null`.
pub fn daemonize(dev_null: &File) -> Result<(), JailError> {
    fork_and_leave_parent("fork (--daemonize)")?;
    // SAFETY: no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(os_error("setsid"));
    }
    fork_and_leave_parent("fork (--daemonize)")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors from one we own.
        if unsafe { libc::dup2(dev_null.as_raw_fd(), fd) } < 0 {
            return Err(os_error("redirecting standard I/O to /dev/null"));
        }
    }
    Ok(())
}

/// Where the process stands after [`new_pid_namespace`].
pub enum PidNsRole {
    /// PID 1 of the new namespace: it goes on to execute the VMM.
    Init,
    /// The jailer in the old namespace, with the VMM's PID there.
    Parent(i32),
}

/// Forks the VMM-to-be into a new PID namespace, where it is PID 1 (a pseudo-init: when it
/// exits, everything it started in the namespace is killed). As in Firecracker, a jailer that
/// leads its session puts the child in a session of its own, so the jailer's exit does not send
/// it SIGHUP.
pub fn new_pid_namespace() -> Result<PidNsRole, JailError> {
    // SAFETY: no arguments.
    let leader = unsafe { libc::getsid(0) == libc::getpid() };
    // SAFETY: unshare of the PID namespace for children; the process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
        return Err(os_error("unshare(CLONE_NEWPID)"));
    }
    // SAFETY: the process is single-threaded, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(os_error("fork (--new-pid-ns)")),
        0 => {
            // SAFETY: no arguments.
            if leader && unsafe { libc::setsid() } < 0 {
                return Err(os_error("setsid"));
            }
            Ok(PidNsRole::Init)
        }
        pid => Ok(PidNsRole::Parent(pid)),
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Becomes `uid:gid` with no supplementary groups and no capability left anywhere: the
/// bounding set emptied (nothing can come back on exec, even for uid 0), ambient capabilities
/// cleared, the three sets zeroed, and `no_new_privs` set so no set-uid or file-capability
/// binary can grant any later.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: prctl calls with integer arguments only.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                // EINVAL: past the last capability this kernel knows.
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(os_error("dropping the capability bounding set"));
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) < 0
        {
            return Err(os_error("clearing ambient capabilities"));
        }
    }
    // SAFETY: setgroups with an empty list; setres[gu]id with plain ids.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) < 0 {
            return Err(os_error("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) < 0 {
            return Err(os_error(&format!("setresgid {gid}")));
        }
        if libc::setresuid(uid, uid, uid) < 0 {
            return Err(os_error(&format!("setresuid {uid}")));
        }
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset with a version-3 header and two data words, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(os_error("clearing capabilities"));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(os_error("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

/// Microseconds on `clock` (the start-time flags Firecracker's jailer hands to the VMM).
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1000)
}
