//! TSC frequency: `probe.tsc_khz=` if given, else CPUID (hypervisor timing leaf 0x40000010,
//! then leaf 0x15, then leaf 0x16), else a 10 ms calibration against the local APIC timer
//! (KVM's APIC bus runs at 1 GHz), else [`ferry_probe::DEFAULT_TSC_KHZ`]. Determined lazily on
//! first use, so tests that need no time (`boot`, `serial`) do not pay for the calibration.

use super::io::{cpuid, mmio_read32, mmio_write32, rdtsc};

static mut OVERRIDE_KHZ: Option<u64> = None;
static mut TSC_KHZ: u64 = 0;

/// Records the `probe.tsc_khz=` override (if any).
pub fn init(override_khz: Option<u64>) {
    // SAFETY: written once at boot on the boot CPU.
    unsafe { OVERRIDE_KHZ = override_khz };
}

fn determine() -> u64 {
    // SAFETY: written once at boot.
    let over = unsafe { OVERRIDE_KHZ };
    over.or_else(from_cpuid)
        .or_else(from_lapic)
        .unwrap_or(ferry_probe::DEFAULT_TSC_KHZ)
}

const LAPIC: u64 = 0xfee0_0000;
const LVT_TIMER: u64 = LAPIC + 0x320;
const TIMER_INITIAL: u64 = LAPIC + 0x380;
const TIMER_CURRENT: u64 = LAPIC + 0x390;
const TIMER_DIVIDE: u64 = LAPIC + 0x3e0;
/// KVM's local APIC timer frequency (`APIC_BUS_CYCLE_NS_DEFAULT` = 1 ns) with divide-by-1.
const LAPIC_TIMER_KHZ: u64 = 1_000_000;

/// Measures TSC ticks against the masked one-shot LAPIC timer over about 10 ms.
fn from_lapic() -> Option<u64> {
    mmio_write32(LVT_TIMER, 0x1_00ff); // masked, one-shot, vector 0xff
    mmio_write32(TIMER_DIVIDE, 0xb); // divide by 1
    mmio_write32(TIMER_INITIAL, u32::MAX);
    let c0 = mmio_read32(TIMER_CURRENT);
    let t0 = rdtsc();
    // Spin about 10 ms assuming a >= 1 GHz TSC; the result does not depend on the guess.
    while rdtsc().wrapping_sub(t0) < 20_000_000 {}
    let c1 = mmio_read32(TIMER_CURRENT);
    let t1 = rdtsc();
    mmio_write32(TIMER_INITIAL, 0);
    let timer_ticks = u64::from(c0.wrapping_sub(c1));
    if c0 == 0 || timer_ticks == 0 {
        return None;
    }
    let khz = (t1 - t0).saturating_mul(LAPIC_TIMER_KHZ) / timer_ticks;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

fn from_cpuid() -> Option<u64> {
    let (_, _, ecx1, _) = cpuid(1);
    if ecx1 & (1 << 31) != 0 {
        let (max_hv, ..) = cpuid(0x4000_0000);
        if (0x4000_0010..0x4001_0000).contains(&max_hv) {
            let (khz, ..) = cpuid(0x4000_0010);
            if khz != 0 {
                return Some(u64::from(khz));
            }
        }
    }
    let (max, ..) = cpuid(0);
    if max >= 0x15 {
        let (den, num, crystal_hz, _) = cpuid(0x15);
        if den != 0 && num != 0 && crystal_hz != 0 {
            return Some(u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000);
        }
    }
    if max >= 0x16 {
        let (mhz, ..) = cpuid(0x16);
        if mhz & 0xffff != 0 {
            return Some(u64::from(mhz & 0xffff) * 1000);
        }
    }
    None
}

/// TSC ticks per millisecond (determined on first call).
pub fn khz() -> u64 {
    // SAFETY: only the boot CPU runs Rust code.
    unsafe {
        if TSC_KHZ == 0 {
            TSC_KHZ = determine();
        }
        TSC_KHZ
    }
}

/// TSC ticks in `ms` milliseconds.
pub fn ms_to_ticks(ms: u64) -> u64 {
    ms.saturating_mul(khz())
}

/// A deadline `ms` milliseconds from now.
pub fn deadline_ms(ms: u64) -> u64 {
    rdtsc().saturating_add(ms_to_ticks(ms))
}

/// Whether `deadline` has passed.
pub fn expired(deadline: u64) -> bool {
    rdtsc() >= deadline
}
