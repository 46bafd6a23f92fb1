//! The tests that need no device: `boot`, `serial`, `info`, `cpuid`, `halt` and `poweroff`.

use super::{fail_str, pass, tsc, user, Global, State};
use ferry_probe::bootinfo::{BootError, BootProtocol};
use ferry_probe::fmt::LineBuf;
use ferry_probe::tables;

/// `boot`: memory size, CPU count and command-line health.
pub fn boot(st: &State) {
    if let Some(e) = st.boot_error {
        fail_str(match e {
            BootError::BadMagic => "bad hvm_start_info magic",
            BootError::Unreadable => "boot information unreadable",
        });
        return;
    }
    let cmdline_ok = st.boot.has_cmdline && st.cfg.errors == 0;
    let mut l = LineBuf::new();
    l.str("mem_mib=").dec(st.boot.usable_mib());
    l.str(" cpus=").dec(st.cpus.cpus() as u64);
    l.str(" cmdline_ok=").dec(u64::from(cmdline_ok));
    pass(&l);
}

/// `info`: diagnostics (boot protocol, CPU table, TSC frequency, memory map size).
pub fn info(st: &State) {
    let mut l = LineBuf::new();
    l.str("protocol=").str(match st.boot.protocol {
        BootProtocol::Pvh => "pvh",
        BootProtocol::Linux64 => "linux64",
    });
    l.str(" cpu_table=").str(match st.cpus.source {
        tables::CpuSource::None => "none",
        tables::CpuSource::MpTable => "mptable",
        tables::CpuSource::Madt => "madt",
    });
    l.str(" tsc_khz=")
        .dec(tsc::khz())
        .str(" e820_entries=")
        .dec(st.boot.mem_count as u64);
    l.str(" virtio_devices=").dec(st.cfg.virtio_count as u64);
    l.str(" virtio_source=").str(st.virtio_source);
    l.str(" acpi_power_off=")
        .dec(u64::from(st.acpi_power_off.is_some()));
    pass(&l);
}

/// `cpuid`: the CPU the VMM presents (CPUID 1, 7.0, 0x8000_0001, IA32_MISC_ENABLE and, when
/// CPUID says it exists, IA32_ARCH_CAPABILITIES), for checking CPU templates.
pub fn cpuid() {
    let (eax1, _, ecx1, edx1) = super::io::cpuid(1);
    let (_, ebx7, _, edx7) = super::io::cpuid(7);
    let (_, _, ext1_ecx, ext1_edx) = super::io::cpuid(0x8000_0001);
    let misc_enable = super::io::rdmsr(0x1a0);
    let mut l = LineBuf::new();
    l.str("leaf1_eax=")
        .hex_fixed(u64::from(eax1), 8)
        .str(" leaf1_ecx=")
        .hex_fixed(u64::from(ecx1), 8)
        .str(" leaf1_edx=")
        .hex_fixed(u64::from(edx1), 8)
        .str(" leaf7_ebx=")
        .hex_fixed(u64::from(ebx7), 8)
        .str(" ext1_ecx=")
        .hex_fixed(u64::from(ext1_ecx), 8)
        .str(" ext1_edx=")
        .hex_fixed(u64::from(ext1_edx), 8)
        .str(" misc_enable=")
        .hex_fixed(misc_enable, 16);
    // CPUID.7.0:EDX[29] announces IA32_ARCH_CAPABILITIES; without it the read would fault.
    if edx7 & (1 << 29) != 0 {
        l.str(" arch_cap=").hex_fixed(super::io::rdmsr(0x10a), 16);
    } else {
        l.str(" arch_cap=none");
    }
    pass(&l);
}

static SERIAL_TEXT: Global<[u8; ferry_probe::serial_text::SERIAL_TEXT_LEN]> =
    Global::new([0; 4096]);

/// Ring 3: generates the serial text and returns its CRC-32.
extern "C" fn serial_text_gen(_: u64) -> u64 {
    // SAFETY: only this function and `serial_test` (after it returns) touch the buffer.
    let buf = unsafe { &mut *SERIAL_TEXT.ptr() };
    ferry_probe::serial_text::serial_text(buf);
    u64::from(ferry_probe::crc32::crc32(buf))
}

/// `serial`: prints the known 4 KiB text, then its length and CRC-32.
pub fn serial() {
    let crc = user::call(serial_text_gen, 0);
    // SAFETY: filled by `serial_text_gen`; no writer remains.
    let text = unsafe { &*SERIAL_TEXT.ptr() };
    super::serial::write(text);
    let mut l = LineBuf::new();
    l.str("bytes=")
        .dec(text.len() as u64)
        .str(" crc32=")
        .hex_fixed(crc, 8);
    pass(&l);
}

/// `halt`: reports, then stops this CPU for good with `cli; hlt`, as Linux does on `poweroff`
/// without a power-off method. Nothing follows (no summary, no exit device): the VMM must notice
/// that no vCPU can run again. APs the `smp` test started are already halted the same way.
pub fn halt() -> ! {
    let mut l = LineBuf::new();
    l.str("halting with interrupts off");
    super::pass(&l);
    loop {
        // SAFETY: halting with interrupts off is the point of the test.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// `poweroff`: powers the machine off the ACPI way (S5 into the FADT's sleep control register),
/// as Linux's `poweroff` does; then halts (the VMM must have ended the VM by then). FAILs when
/// the tables offer no way.
pub fn power_off(st: &State) {
    let Some(off) = st.acpi_power_off else {
        fail_str("no ACPI sleep control register or \\_S5_");
        return;
    };
    let mut l = LineBuf::new();
    l.str("port=")
        .hex(u64::from(off.sleep_control_port))
        .str(" s5=")
        .dec(u64::from(off.s5_sleep_type));
    pass(&l);
    super::io::outb(off.sleep_control_port, off.command());
    loop {
        // SAFETY: nothing is left to run; the VMM ends the VM on the write above.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
