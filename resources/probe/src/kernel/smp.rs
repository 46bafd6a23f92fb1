//! `smp`: wakes every AP listed in the MP table / MADT with INIT-SIPI-SIPI through the local
//! APIC (xAPIC MMIO, or the x2APIC MSRs when the VMM enabled x2APIC mode) and waits (bounded)
//! until each has reached long mode and counted itself. No INIT/SIPI delays: KVM needs none.

use super::boot::{ap_count, ap_ids, ap_trampoline, ap_trampoline_end};
use super::io::{cpuid, mmio_write32, rdmsr, wrmsr};
use super::{pass, tsc, user, State};
use ferry_probe::fmt::LineBuf;
use ferry_probe::AP_TRAMPOLINE_GPA;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = LAPIC + 0xf0;
const LAPIC_ICR_LO: u64 = LAPIC + 0x300;
const LAPIC_ICR_HI: u64 = LAPIC + 0x310;
const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_ICR: u32 = 0x830;
const ICR_INIT: u32 = 0x4500; // INIT, level assert
const ICR_SIPI: u32 = 0x4600; // start-up
/// How long to wait for the APs (they run an emulated trampoline of ~40 instructions each).
const WAIT_MS: u64 = 3000;

/// Runs the test.
pub fn run(st: &State) {
    let expected = st.cpus.cpus();
    let bsp = (cpuid(1).1 >> 24) as u8;
    let x2apic = rdmsr(MSR_APIC_BASE) & APIC_BASE_X2APIC != 0;
    let mut copy = user::CopyArgs {
        dst: AP_TRAMPOLINE_GPA as *mut u8,
        src: &raw const ap_trampoline,
        len: (&raw const ap_trampoline_end as usize) - (&raw const ap_trampoline as usize),
    };
    user::call_with(user::copy, &mut copy);
    // SAFETY: APs are halted (or not started); nothing else writes the counter now.
    unsafe { core::ptr::write_volatile(&raw mut ap_count, 0) };
    // Software-enable the local APIC (spurious vector 0xff).
    if x2apic {
        wrmsr(MSR_X2APIC_SVR, 0x1ff);
    } else {
        mmio_write32(LAPIC_SVR, 0x1ff);
    }
    let vector = (AP_TRAMPOLINE_GPA >> 12) as u32;
    let mut woken = 0u32;
    for &id in st.cpus.ids() {
        if id == bsp {
            continue;
        }
        woken += 1;
        for icr in [ICR_INIT, ICR_SIPI | vector, ICR_SIPI | vector] {
            if x2apic {
                wrmsr(MSR_X2APIC_ICR, u64::from(id) << 32 | u64::from(icr));
            } else {
                mmio_write32(LAPIC_ICR_HI, u32::from(id) << 24);
                mmio_write32(LAPIC_ICR_LO, icr);
            }
        }
    }
    let deadline = tsc::deadline_ms(WAIT_MS);
    let mut arrived;
    loop {
        // SAFETY: APs update the counter with lock xadd; a volatile read observes it.
        arrived = unsafe { core::ptr::read_volatile(&raw const ap_count) };
        if arrived >= woken || tsc::expired(deadline) {
            break;
        }
    }
    let cpus = 1 + u64::from(arrived);
    let mut l = LineBuf::new();
    l.str("cpus=").dec(cpus);
    if cpus == expected as u64 {
        pass(&l);
    } else {
        l.str(" expected=").dec(expected as u64).str(" apic_ids=");
        for i in 0..arrived.min(16) as usize {
            if i > 0 {
                l.byte(b',');
            }
            // SAFETY: in-bounds volatile read of a byte the APs write once.
            let id = unsafe { (&raw const ap_ids).cast::<u8>().add(i).read_volatile() };
            l.dec(u64::from(id));
        }
        super::fail(&l);
    }
}
