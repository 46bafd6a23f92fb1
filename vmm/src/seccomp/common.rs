//! What every ferry thread needs just to be a Rust thread: memory allocation, locks and
//! channels, time, logging, and ending.

use super::rules::{any, arg_in, Allow, When};

/// The syscalls of the Rust runtime, the allocator and the logger, on any thread.
pub fn runtime() -> Vec<Allow> {
    use libc::*;
    vec![
        any(
            SYS_futex,
            "mutexes, condition variables, channels, thread parking",
        ),
        any(
            SYS_sched_yield,
            "spin loops in std and crossbeam-style channels back off",
        ),
        any(
            SYS_mmap,
            "the allocator maps large blocks and per-thread arenas",
        ),
        any(SYS_munmap, "the allocator returns large blocks"),
        any(SYS_mremap, "the allocator grows large blocks in place"),
        any(SYS_mprotect, "the allocator commits arena memory"),
        any(
            SYS_madvise,
            "the allocator trims freed memory (MADV_DONTNEED)",
        ),
        any(SYS_brk, "the allocator's main heap"),
        any(
            SYS_clock_gettime,
            "Instant/SystemTime when the vDSO falls back to the syscall",
        ),
        any(SYS_clock_nanosleep, "std::thread::sleep"),
        any(SYS_nanosleep, "sleeps in libraries"),
        any(
            SYS_getrandom,
            "std's HashMap seeds its hasher once per thread",
        ),
        any(SYS_write, "log lines on stderr; eventfd signals"),
        any(SYS_writev, "log lines written in pieces"),
        any(SYS_close, "dropping files, sockets and eventfds"),
        any(SYS_rt_sigprocmask, "abort() and thread exit block signals"),
        any(SYS_rt_sigreturn, "return from the vCPU kick signal handler"),
        any(
            SYS_sigaltstack,
            "std removes the thread's alternate signal stack when it ends",
        ),
        any(SYS_gettid, "abort() and logging"),
        any(SYS_getpid, "abort() names its own process"),
        arg_in(
            SYS_tgkill,
            0,
            vec![u64::from(std::process::id())],
            "kicking a vCPU thread, abort(): only threads of this process",
        ),
        arg_in(
            SYS_fcntl,
            1,
            vec![F_GETFD as u64],
            "std checks an fd is open before closing it (debug builds)",
        ),
        any(
            SYS_restart_syscall,
            "the kernel restarts a sleep or poll a signal (the vCPU kick) interrupted",
        ),
        any(SYS_exit, "a thread ends"),
        any(
            SYS_exit_group,
            "the process ends (any thread may end it on a fatal error)",
        ),
    ]
}

/// Creating threads (clone with CLONE_THREAD only: never a new process) and what glibc does in
/// the new thread before ferry's code runs (it starts under its creator's filter).
pub fn spawn_threads() -> Vec<Allow> {
    use libc::*;
    vec![
        Allow {
            nr: SYS_clone,
            when: When::HasBits(0, CLONE_THREAD as u64),
            why: "spawning a thread (CLONE_THREAD required: no fork, no new process)",
        },
        any(
            SYS_clone3,
            "pthread_create tries clone3 first; a stacked filter answers ENOSYS so glibc \
             falls back to clone, whose flags are checked",
        ),
        any(
            SYS_set_robust_list,
            "glibc registers a new thread's robust futex list",
        ),
        any(
            SYS_rseq,
            "glibc registers a new thread's restartable sequences area",
        ),
        arg_in(
            SYS_prctl,
            0,
            vec![
                PR_SET_NAME as u64,
                PR_GET_NAME as u64,
                PR_SET_NO_NEW_PRIVS as u64,
            ],
            "naming a new thread (ferry_vcpu0, ...); NO_NEW_PRIVS before it installs its filter",
        ),
        arg_in(
            SYS_seccomp,
            0,
            vec![SECCOMP_SET_MODE_FILTER as u64],
            "a new thread installs its own filter (which can only narrow this one)",
        ),
        any(SYS_sched_getaffinity, "std asks how many CPUs there are"),
    ]
}
