//! A hook a thread spawned by this crate calls first thing, before any of its own work.
//!
//! The `ferry` binary sets it to install the thread's seccomp filter (`ferry_vmm::seccomp`);
//! this crate does not know about seccomp. Unset (library users, unit tests), it does nothing.

use std::sync::OnceLock;

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets the hook once; later calls are ignored (the process has one policy).
pub fn set(hook: fn()) {
    let _ = HOOK.set(hook);
}

/// Runs the hook, if any, on the calling (just started) thread.
pub fn started() {
    if let Some(hook) = HOOK.get() {
        hook();
    }
}
