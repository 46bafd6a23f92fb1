//! Kicking a vCPU thread out of `KVM_RUN` with a real-time signal.
//!
//! Each vCPU thread publishes a pointer to its `kvm_run` page in a thread-local. The signal handler
//! sets `immediate_exit` there: if the thread is inside `KVM_RUN` the ioctl returns EINTR; if it is
//! about to enter, KVM returns at once. Either way the thread then reads its request channel.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::VmmError;

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a thread-local read and one byte store.
    let _ = KVM_RUN.try_with(|ptr| {
        let run = ptr.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this very thread to its own mapped kvm_run page,
            // which outlives the thread's use of it.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// Installs the process-wide handler once, before any vCPU starts.
pub fn install_kick_handler() -> Result<(), VmmError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(|e| VmmError::Io {
        what: "installing the vCPU kick signal handler".into(),
        source: std::io::Error::from_raw_os_error(e.errno()),
    })
}

/// Publishes the current thread's kvm_run page for the signal handler.
pub fn register_current_thread(fd: &mut VcpuFd) {
    let run: *mut kvm_run = fd.get_kvm_run();
    KVM_RUN.with(|ptr| ptr.set(run));
}

/// Signals the vCPU thread.
pub fn kick(thread: &JoinHandle<()>) {
    kick_pthread(thread.as_pthread_t());
}

/// Signals the vCPU thread `thread`, whose `JoinHandle` its owner keeps (not joined) while this
/// may be called.
pub fn kick_pthread(thread: libc::pthread_t) {
    // SAFETY: pthread_kill on a thread that is not joined yet; one that already exited returns
    // ESRCH, which is harmless.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
