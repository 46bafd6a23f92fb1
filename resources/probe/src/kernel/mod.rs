//! The probe kernel: boot, shared state, the test runner and the report helpers.

mod balloon;
mod basic;
mod blk;
mod blk_change;
mod boot;
mod buttons;
mod dirty;
mod io;
mod net;
mod rng;
mod serial;
mod smp;
mod tsc;
mod user;
mod virtio;
mod vsock;

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use ferry_probe::bootinfo::{BootError, BootInfo, BootProtocol, PhysMem};
use ferry_probe::cmdline::{Cmdline, ProbeConfig, TestName};
use ferry_probe::fmt::LineBuf;
use ferry_probe::tables::{self, CpuList};
use ferry_probe::IDENTITY_MAP_LIMIT;

/// A static owned by the boot CPU. APs never run Rust code and ring-3 helpers run while ring 0
/// waits for them, so there is never concurrent access; users still justify each access.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: see the type's documentation: a single thread of execution uses these statics.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps `v`.
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }

    /// Raw pointer to the value.
    pub fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Everything the probe learned at boot (filled once, in ring 3, by [`prepare`]).
pub struct State {
    /// Boot information copied out of the VMM's structures.
    pub boot: BootInfo,
    /// Parsed command line.
    pub cfg: ProbeConfig,
    /// CPUs from the MP table or MADT.
    pub cpus: CpuList,
    /// Where `cfg.virtio` came from: the command line, the DSDT, or nowhere.
    pub virtio_source: &'static str,
    /// How to power off through ACPI, when the tables say.
    pub acpi_power_off: Option<tables::AcpiPowerOff>,
    /// The power button's event register, when the DSDT has one.
    pub ged_event_port: Option<u16>,
    /// Result of reading the boot information.
    pub boot_error: Option<BootError>,
}

static STATE: Global<MaybeUninit<State>> = Global::new(MaybeUninit::uninit());

/// The boot state. Valid after [`prepare`] ran (first thing in `probe_main`).
pub fn state() -> &'static State {
    // SAFETY: written once by `prepare` before any reader; the probe runs on one CPU (APs
    // never run Rust code).
    unsafe { (*STATE.ptr()).assume_init_ref() }
}

/// Guest memory as the kernel sees it: the identity map, limited to known memory once the
/// memory map is known.
struct KernelMem<'a> {
    boot: Option<&'a BootInfo>,
}

impl PhysMem for KernelMem<'_> {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if end > IDENTITY_MAP_LIMIT || addr == 0 {
            return None;
        }
        if let Some(b) = self.boot {
            if b.mem_count > 0 && !b.is_backed(addr, len as u64) {
                return None;
            }
        }
        // SAFETY: identity-mapped guest memory that the memory map says exists.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

struct PrepareArgs {
    protocol: u32,
    info: u64,
}

/// Ring 3: copies the boot information, parses the command line and finds the CPUs.
extern "C" fn prepare(arg: u64) -> u64 {
    // SAFETY: `arg` is a `PrepareArgs` from `call_with`.
    let a = unsafe { user::args::<PrepareArgs>(arg) };
    let raw = KernelMem { boot: None };
    let parsed = if a.protocol == 0 {
        BootInfo::from_pvh(&raw, a.info)
    } else {
        BootInfo::from_linux(&raw, a.info)
    };
    // SAFETY: single writer before any reader (see `state`).
    let st = unsafe { &mut *STATE.ptr() };
    let (boot, boot_error) = match parsed {
        Ok(b) => (b, None),
        Err(e) if a.protocol == 0 => (BootInfo::empty(BootProtocol::Pvh), Some(e)),
        Err(e) => (BootInfo::empty(BootProtocol::Linux64), Some(e)),
    };
    let st = st.write(State {
        boot,
        cfg: ProbeConfig::default(),
        cpus: CpuList::default(),
        virtio_source: "none",
        acpi_power_off: None,
        ged_event_port: None,
        boot_error,
    });
    st.cfg = ProbeConfig::parse(&Cmdline::new(st.boot.cmdline()));
    let mem = KernelMem {
        boot: Some(&st.boot),
    };
    st.cpus = tables::discover_cpus(&mem, st.boot.rsdp);
    let rsdp = match st.boot.rsdp {
        0 => tables::find_rsdp(&mem).unwrap_or(0),
        hint => hint,
    };
    // Without `virtio_mmio.device=` entries the VMM may describe its devices in the DSDT.
    if st.cfg.virtio_count > 0 {
        st.virtio_source = "cmdline";
    } else if let Some(dsdt) = tables::find_dsdt(&mem, rsdp) {
        st.cfg.virtio_count = tables::dsdt_virtio_devices(dsdt, &mut st.cfg.virtio);
        st.virtio_source = "dsdt";
    }
    st.acpi_power_off = tables::acpi_power_off(&mem, rsdp);
    st.ged_event_port = tables::find_dsdt(&mem, rsdp).and_then(tables::ged_event_port);
    0
}

/// Pass/fail tally and the test currently running (for the exception handler).
struct Tally {
    pass: u32,
    fail: u32,
    current: TestName,
}

static TALLY: Global<Tally> = Global::new(Tally {
    pass: 0,
    fail: 0,
    current: TestName::EMPTY,
});

fn tally() -> &'static mut Tally {
    // SAFETY: only ring-0 code on the boot CPU touches the tally.
    unsafe { &mut *TALLY.ptr() }
}

/// Prints `line` plus a newline.
pub fn say(line: &LineBuf) {
    serial::write(line.as_bytes());
    serial::write(b"\n");
}

/// Starts a report line `probe: <test>: `.
pub fn line_for(test: &[u8]) -> LineBuf {
    let mut l = LineBuf::new();
    l.str("probe: ").bytes(test).str(": ");
    l
}

/// Prints `probe: <current test>: PASS <details>` and counts it.
pub fn pass(details: &LineBuf) {
    let t = tally();
    let mut l = line_for(t.current.as_bytes());
    l.str("PASS");
    if !details.as_bytes().is_empty() {
        l.byte(b' ').bytes(details.as_bytes());
    }
    say(&l);
    t.pass += 1;
}

/// Prints `probe: <current test>: FAIL <reason>` and counts it.
pub fn fail(reason: &LineBuf) {
    let t = tally();
    let mut l = line_for(t.current.as_bytes());
    l.str("FAIL ").bytes(reason.as_bytes());
    say(&l);
    t.fail += 1;
}

/// [`fail`] with a fixed reason.
pub fn fail_str(reason: &str) {
    let mut l = LineBuf::new();
    l.str(reason);
    fail(&l);
}

/// Prints the summary line and exits with 0 (all passed) or 1.
fn finish() -> ! {
    let t = tally();
    let mut l = LineBuf::new();
    l.str("probe: done pass=")
        .dec(u64::from(t.pass))
        .str(" fail=")
        .dec(u64::from(t.fail));
    say(&l);
    io::exit(if t.fail == 0 { 0 } else { 1 })
}

/// Rust entry, called by boot.rs with the protocol (0 PVH, 1 Linux 64-bit) and the physical
/// address of `hvm_start_info` / the zero page.
#[no_mangle]
extern "C" fn probe_main(protocol: u32, info: u64) -> ! {
    serial::init();
    let mut args = PrepareArgs { protocol, info };
    user::call_with(prepare, &mut args);
    let st = state();
    tsc::init(st.cfg.tsc_khz);
    for test in st.cfg.tests() {
        tally().current = *test;
        match test.as_bytes() {
            b"boot" => basic::boot(st),
            b"serial" => basic::serial(),
            b"smp" => smp::run(st),
            b"dirty" => dirty::run(st),
            b"blk" => blk::run(st),
            b"blkchange" => blk_change::run(st),
            b"net" => net::run(st),
            b"rng" => rng::run(st),
            b"vsock" => vsock::run(st),
            b"balloon" => balloon::run(st),
            b"info" => basic::info(st),
            b"cpuid" => basic::cpuid(),
            b"halt" => basic::halt(),
            b"poweroff" => basic::power_off(st),
            b"keyboard" => buttons::keyboard(),
            b"power_button" => buttons::power_button(st),
            // Self-test of the exception path: #UD in ring 0, reported as a FAIL, exit 1.
            // SAFETY: ud2 raises #UD by design; the handler never returns.
            b"fault" => unsafe { core::arch::asm!("ud2", options(noreturn)) },
            _ => fail_str("unknown test"),
        }
    }
    finish()
}

/// Called by the exception stubs with the frame (vector, error code, rip, cs, rflags, rsp, ss).
#[no_mangle]
extern "C" fn probe_exception(frame: *const u64) -> ! {
    // SAFETY: isr_common passes the stack pointer at the pushed frame.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let mut l = LineBuf::new();
    l.str("exception vector=")
        .dec(f[0])
        .str(" error=")
        .hex(f[1])
        .str(" rip=")
        .hex(f[2]);
    l.str(" cs=")
        .hex(f[3])
        .str(" rsp=")
        .hex(f[5])
        .str(" cr2=")
        .hex(io::cr2());
    if tally().current.as_bytes().is_empty() {
        tally().current = TestName::new(b"boot");
    }
    fail(&l);
    finish()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    if io::cpl() != 0 {
        // Ring 3 cannot print: trap into the exception handler, which reports and exits.
        // SAFETY: ud2 raises #UD by design.
        unsafe { core::arch::asm!("ud2", options(noreturn)) }
    }
    fail_str("panic");
    finish()
}
