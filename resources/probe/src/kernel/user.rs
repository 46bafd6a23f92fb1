//! Ring-3 helpers. Ring-0 code runs in KVM's instruction emulator on PVM hosts (microseconds
//! per instruction) while ring-3 code runs natively, so every loop over memory (parsing boot
//! tables, scanning the BIOS area, CRCs, the blk pattern) is done here through
//! `probe_user_call`. Functions in this module must not do port I/O or MMIO.

use super::boot::probe_user_call;

/// Runs `f(arg)` in ring 3 and returns its result.
pub fn call(f: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    // SAFETY: the trampoline saves and restores all callee-saved registers and the ring-0
    // stack; `f` only computes and touches memory.
    unsafe { probe_user_call(f, arg) }
}

/// Runs `f(arg)` in ring 3 with a pointer to `args` as its argument.
pub fn call_with<T>(f: extern "C" fn(u64) -> u64, args: &mut T) -> u64 {
    call(f, args as *mut T as u64)
}

/// Recovers the argument block passed by [`call_with`].
///
/// # Safety
/// `arg` must come from `call_with::<T>` on the still-live ring-0 stack.
pub unsafe fn args<'a, T>(arg: u64) -> &'a mut T {
    // SAFETY: per the contract above.
    unsafe { &mut *(arg as *mut T) }
}

/// Arguments of [`crc_update`].
pub struct CrcArgs {
    /// Running state.
    pub crc: ferry_probe::crc32::Crc32,
    /// Data start.
    pub ptr: *const u8,
    /// Data length.
    pub len: usize,
}

/// Ring 3: feeds `ptr..ptr+len` into the CRC state.
pub extern "C" fn crc_update(arg: u64) -> u64 {
    // SAFETY: `arg` is a `CrcArgs` from `call_with`; the data range was set by ring 0.
    let a = unsafe { args::<CrcArgs>(arg) };
    // SAFETY: the range is a probe buffer.
    a.crc
        .update(unsafe { core::slice::from_raw_parts(a.ptr, a.len) });
    0
}

/// Arguments of [`copy`].
pub struct CopyArgs {
    /// Destination.
    pub dst: *mut u8,
    /// Source.
    pub src: *const u8,
    /// Length.
    pub len: usize,
}

/// Ring 3: copies `len` bytes.
pub extern "C" fn copy(arg: u64) -> u64 {
    // SAFETY: `arg` is a `CopyArgs`; ranges set by ring 0 and non-overlapping.
    let a = unsafe { args::<CopyArgs>(arg) };
    // SAFETY: as above.
    unsafe { core::ptr::copy_nonoverlapping(a.src, a.dst, a.len) };
    0
}
