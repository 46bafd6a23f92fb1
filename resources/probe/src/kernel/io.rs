//! Port I/O, MMIO, CPUID, TSC and the exit path. Ring 0 only (ring-3 port I/O or MMIO ends in a
//! triple fault on PVM hosts).

use core::arch::asm;

/// Writes `v` to I/O port `port`.
#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("outb %al, %dx", in("dx") port, in("al") v, options(att_syntax, nomem, nostack, preserves_flags))
    }
}

/// Reads I/O port `port`.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("inb %dx, %al", in("dx") port, out("al") v, options(att_syntax, nomem, nostack, preserves_flags))
    }
    v
}

/// Writes `bytes` to `port` with one `rep outsb` (each byte is still its own port exit, but
/// the loop costs one emulated instruction).
#[inline(always)]
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: reads `bytes.len()` bytes from a valid slice; DF is clear per the ABI.
    unsafe {
        asm!("rep outsb", inout("rsi") bytes.as_ptr() => _, inout("rcx") bytes.len() => _,
             in("dx") port, options(att_syntax, readonly, nostack, preserves_flags))
    }
}

/// 32-bit MMIO read.
#[inline(always)]
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass device register addresses inside the identity map.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// 32-bit MMIO write.
#[inline(always)]
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Reads the time-stamp counter (also allowed in ring 3).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}

/// CPUID leaf `leaf` (subleaf 0): (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid has no memory effects; rbx (reserved by LLVM) is saved in a scratch register.
    unsafe {
        asm!("movq %rbx, {t:r}", "cpuid", "xchgq %rbx, {t:r}", t = out(reg) b,
             inout("eax") leaf => a, inout("ecx") 0u32 => c, out("edx") d,
             options(att_syntax, nomem, nostack, preserves_flags))
    }
    (a, b, c, d)
}

/// Reads model-specific register `msr`.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read architectural MSRs that exist on every x86-64 CPU KVM exposes.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes model-specific register `msr`.
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: callers write architectural MSRs with valid values.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    }
}

/// The current privilege level (0 or 3).
#[inline(always)]
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        asm!("movw %cs, {0:x}", out(reg) cs, options(att_syntax, nomem, nostack, preserves_flags))
    }
    cs & 3
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects (ring 0 only).
    unsafe {
        asm!("movq %cr2, {0}", out(reg) v, options(att_syntax, nomem, nostack, preserves_flags))
    }
    v
}

/// Ends the run with `status`: the exit device (port 0xf4), then an i8042 reset, then halt.
pub fn exit(status: u8) -> ! {
    outb(ferry_probe::EXIT_PORT, status);
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting with interrupts off stops this CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
