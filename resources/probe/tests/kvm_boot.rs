//! Boots the probe ELF (`target/<profile>/probe`, built by build.rs) in a minimal KVM harness
//! written here, through both boot protocols, and checks its serial report, exit status and the
//! `dirty` test's guest-memory contract. Independent of ferry and QEMU. Skips (passes with a
//! note) when /dev/kvm is unavailable.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const MEM_SIZE: usize = 256 << 20;
const START_INFO: u64 = 0x6000;
const ZERO_PAGE: u64 = 0x7000;
const PML4: u64 = 0x9000;
const CMDLINE: u64 = 0x20000;

fn probe_elf() -> Vec<u8> {
    // The test binary is target/<profile>/deps/kvm_boot-*; the probe is target/<profile>/probe.
    let exe = std::env::current_exe().expect("current_exe");
    let path: PathBuf = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("probe");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

struct Elf {
    entry: u64,
    pvh_entry: Option<u64>,
    /// (paddr, file bytes, memsz)
    loads: Vec<(u64, Vec<u8>, u64)>,
    kind: u16,
}

fn parse_elf(b: &[u8]) -> Elf {
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!(b[4], 2, "ELF64");
    let (phoff, phentsize, phnum) = (
        u64_at(b, 0x20) as usize,
        u16_at(b, 0x36) as usize,
        u16_at(b, 0x38),
    );
    let mut elf = Elf {
        entry: u64_at(b, 0x18),
        pvh_entry: None,
        loads: vec![],
        kind: u16_at(b, 0x10),
    };
    for i in 0..phnum as usize {
        let ph = &b[phoff + i * phentsize..];
        let (kind, off, paddr) = (u32_at(ph, 0), u64_at(ph, 8) as usize, u64_at(ph, 0x18));
        let (filesz, memsz) = (u64_at(ph, 0x20) as usize, u64_at(ph, 0x28));
        match kind {
            1 => elf
                .loads
                .push((paddr, b[off..off + filesz].to_vec(), memsz)),
            4 => {
                let mut n = &b[off..off + filesz];
                while n.len() >= 12 {
                    let (namesz, descsz, ty) =
                        (u32_at(n, 0) as usize, u32_at(n, 4) as usize, u32_at(n, 8));
                    let name_end = 12 + namesz.div_ceil(4) * 4;
                    if ty == 18 && &n[12..12 + namesz] == b"Xen\0" {
                        elf.pvh_entry = Some(u32_at(n, name_end) as u64);
                    }
                    n = &n[(name_end + descsz.div_ceil(4) * 4).min(n.len())..];
                }
            }
            _ => {}
        }
    }
    elf
}

/// Guest memory shared with the vCPU thread.
struct Mem {
    ptr: *mut u8,
}
// SAFETY: the mapping lives for the whole process (never unmapped); accesses are byte copies.
unsafe impl Send for Mem {}
unsafe impl Sync for Mem {}

impl Mem {
    fn new() -> Mem {
        // SAFETY: anonymous private mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Mem { ptr: p.cast() }
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM_SIZE);
        // SAFETY: bounds checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(gpa as usize), data.len())
        }
    }
    fn read_u64(&self, gpa: u64) -> u64 {
        assert!(gpa as usize + 8 <= MEM_SIZE);
        // SAFETY: bounds checked; the guest may write concurrently, hence volatile.
        unsafe { std::ptr::read_volatile(self.ptr.add(gpa as usize).cast::<u64>()) }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Protocol {
    Linux64,
    Pvh,
}

/// What a run produced.
struct Outcome {
    serial: Vec<u8>,
    exit: Option<u8>,
    stop_reason: String,
}

impl Outcome {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.serial).into_owned()
    }
}

/// Writes the boot structures for `protocol` and returns the vCPU entry point.
fn setup_memory(mem: &Mem, elf: &Elf, protocol: Protocol, cmdline: &str) {
    for (paddr, bytes, _) in &elf.loads {
        mem.write(*paddr, bytes);
    }
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write(CMDLINE, &c);
    let e820: [(u64, u64, u32); 3] = [
        (0, 0x9fc00, 1),
        (0x9fc00, 0x60400, 2),
        (0x100000, MEM_SIZE as u64 - 0x100000, 1),
    ];
    match protocol {
        Protocol::Linux64 => {
            let mut zp = vec![0u8; 4096];
            zp[0x228..0x22c].copy_from_slice(&(CMDLINE as u32).to_le_bytes());
            zp[0x1e8] = e820.len() as u8;
            for (i, (a, s, t)) in e820.iter().enumerate() {
                let o = 0x2d0 + 20 * i;
                zp[o..o + 8].copy_from_slice(&a.to_le_bytes());
                zp[o + 8..o + 16].copy_from_slice(&s.to_le_bytes());
                zp[o + 16..o + 20].copy_from_slice(&t.to_le_bytes());
            }
            mem.write(ZERO_PAGE, &zp);
            // Identity-map the first 1 GiB with 2 MiB pages, as the Linux boot protocol VMMs do.
            mem.write(PML4, &((PML4 + 0x1000) | 3).to_le_bytes());
            mem.write(PML4 + 0x1000, &((PML4 + 0x2000) | 3).to_le_bytes());
            for i in 0..512u64 {
                mem.write(PML4 + 0x2000 + 8 * i, &((i << 21) | 0x83).to_le_bytes());
            }
        }
        Protocol::Pvh => {
            let mut si = vec![0u8; 56];
            si[0..4].copy_from_slice(&0x336e_c578u32.to_le_bytes());
            si[4..8].copy_from_slice(&1u32.to_le_bytes());
            si[24..32].copy_from_slice(&CMDLINE.to_le_bytes());
            si[40..48].copy_from_slice(&(START_INFO + 0x100).to_le_bytes());
            si[48..52].copy_from_slice(&(e820.len() as u32).to_le_bytes());
            mem.write(START_INFO, &si);
            for (i, (a, s, t)) in e820.iter().enumerate() {
                let mut e = [0u8; 24];
                e[0..8].copy_from_slice(&a.to_le_bytes());
                e[8..16].copy_from_slice(&s.to_le_bytes());
                e[16..20].copy_from_slice(&t.to_le_bytes());
                mem.write(START_INFO + 0x100 + 24 * i as u64, &e);
            }
        }
    }
}

fn seg(selector: u16, code: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 0,
        db: u8::from(!long || !code),
        s: 1,
        l: u8::from(long && code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, elf: &Elf, protocol: Protocol) {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    vcpu.set_cpuid2(&cpuid).expect("set_cpuid2");
    let mut sregs = vcpu.get_sregs().expect("get_sregs");
    let mut regs = vcpu.get_regs().expect("get_regs");
    regs.rflags = 2;
    match protocol {
        Protocol::Linux64 => {
            sregs.cs = seg(0x10, true, true);
            let d = seg(0x18, false, true);
            (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (d, d, d, d, d);
            sregs.cr0 = 0x8000_0011;
            sregs.cr3 = PML4;
            sregs.cr4 = 0x20;
            sregs.efer = 0x500;
            regs.rip = elf.entry;
            regs.rsi = ZERO_PAGE;
            regs.rsp = 0x8ff0;
        }
        Protocol::Pvh => {
            sregs.cs = seg(0x10, true, false);
            let d = seg(0x18, false, false);
            (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (d, d, d, d, d);
            sregs.cr0 = 0x11;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = elf.pvh_entry.expect("PVH note");
            regs.rbx = START_INFO;
        }
    }
    vcpu.set_sregs(&sregs).expect("set_sregs");
    vcpu.set_regs(&regs).expect("set_regs");
}

/// Runs the vCPU; reads of the UART's LSR (0x3fd) return `lsr`.
fn run_vcpu(
    vcpu: &mut VcpuFd,
    serial: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
    lsr: u8,
) -> (Option<u8>, String) {
    loop {
        if stop.load(Ordering::Relaxed) {
            return (None, "stopped".into());
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x3f8, data)) => serial.lock().unwrap().extend_from_slice(data),
            Ok(VcpuExit::IoOut(0xf4, data)) => return (Some(data[0]), "exit device".into()),
            Ok(VcpuExit::IoOut(0x64, _)) => return (None, "i8042 reset".into()),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::IoIn(port, data)) => data.fill(if port == 0x3fd { lsr } else { 0xff }),
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(other) => return (None, format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return (None, format!("run error {e}")),
        }
    }
}

struct Vm {
    _vm: VmFd,
    mem: Arc<Mem>,
    serial: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<(Option<u8>, String)>,
    pthread: libc::pthread_t,
}

/// The signal that interrupts `KVM_RUN` (its handler does nothing; the EINTR is the point).
const KICK: libc::c_int = libc::SIGUSR1;

extern "C" fn on_kick(_: libc::c_int) {}

fn install_kick_handler() {
    // SAFETY: installs a handler that does nothing, without SA_RESTART so KVM_RUN returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(KICK, &sa, std::ptr::null_mut());
    }
}

fn start(protocol: Protocol, cmdline: &str) -> Option<Vm> {
    start_with_lsr(protocol, cmdline, 0x60)
}

/// Starts the probe; the UART's LSR reads as `lsr` (0x60: transmitter empty).
fn start_with_lsr(protocol: Protocol, cmdline: &str, lsr: u8) -> Option<Vm> {
    let Ok(kvm) = Kvm::new() else {
        eprintln!("skipping: /dev/kvm unavailable");
        return None;
    };
    let elf = parse_elf(&probe_elf());
    let vm = kvm.create_vm().expect("create_vm");
    let mem = Arc::new(Mem::new());
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the mapping outlives the VM (it is never unmapped).
    unsafe { vm.set_user_memory_region(region) }.expect("set_user_memory_region");
    vm.set_tss_address(0xfffb_d000).expect("set_tss_address");
    vm.create_irq_chip().expect("create_irq_chip");
    let mut vcpu = vm.create_vcpu(0).expect("create_vcpu");
    setup_memory(&mem, &elf, protocol, cmdline);
    setup_vcpu(&kvm, &vcpu, &elf, protocol);
    let serial = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = mpsc::channel();
    let (s2, st2) = (serial.clone(), stop.clone());
    install_kick_handler();
    let thread = std::thread::spawn(move || {
        let r = run_vcpu(&mut vcpu, &s2, &st2, lsr);
        let _ = tx.send(r);
    });
    let pthread = thread.as_pthread_t();
    Some(Vm {
        _vm: vm,
        mem,
        serial,
        stop,
        done,
        pthread,
    })
}

impl Vm {
    /// Stops a guest that never exits on its own (the dirty loop) by kicking its vCPU thread
    /// out of `KVM_RUN` until it notices the stop flag.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..500 {
            // SAFETY: the thread is alive until it sends on `done`; the handler is installed.
            unsafe { libc::pthread_kill(self.pthread, KICK) };
            if self.done.recv_timeout(Duration::from_millis(10)).is_ok() {
                return;
            }
        }
        panic!("vCPU thread did not stop");
    }

    fn wait(self, timeout: Duration) -> Outcome {
        let (exit, stop_reason) = self.done.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "probe did not finish; serial so far:\n{}",
                String::from_utf8_lossy(&self.serial.lock().unwrap())
            )
        });
        Outcome {
            serial: self.serial.lock().unwrap().clone(),
            exit,
            stop_reason,
        }
    }
    fn serial_text(&self) -> String {
        String::from_utf8_lossy(&self.serial.lock().unwrap()).into_owned()
    }
}

fn boot(protocol: Protocol, cmdline: &str) -> Option<Outcome> {
    Some(start(protocol, cmdline)?.wait(Duration::from_secs(60)))
}

fn check_full_run(protocol: Protocol, name: &str) {
    let Some(out) = boot(protocol, "console=ttyS0 probe.test=boot,serial,info") else {
        return;
    };
    let text = out.text();
    assert_eq!(out.exit, Some(0), "{text} ({})", out.stop_reason);
    assert!(text.starts_with("probe: hello\n"), "{text}");
    assert!(
        text.contains("probe: boot: PASS mem_mib=255 cpus=1 cmdline_ok=1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("probe: info: PASS protocol={name} ")),
        "{text}"
    );
    // The serial text must arrive intact right before its PASS line.
    let mut expected = [0u8; 4096];
    ferry_probe::serial_text::serial_text(&mut expected);
    let crc = ferry_probe::crc32::crc32(&expected);
    let pass_line = format!("probe: serial: PASS bytes=4096 crc32={crc:08x}\n");
    let at = out
        .serial
        .windows(pass_line.len())
        .position(|w| w == pass_line.as_bytes())
        .expect(&text);
    assert_eq!(&out.serial[at - 4096..at], &expected[..]);
    assert!(text.ends_with("probe: done pass=3 fail=0\n"), "{text}");
}

#[test]
fn elf_layout() {
    let elf = parse_elf(&probe_elf());
    assert_eq!(elf.kind, 2, "ET_EXEC");
    assert_eq!(elf.loads.len(), 1);
    assert_eq!(elf.loads[0].0, 0x100000);
    assert!(elf.loads[0].1.len() < 256 << 10, "image stays small");
    let pvh = elf.pvh_entry.expect("PVH note");
    assert!((0x100000..0x100000 + elf.loads[0].2).contains(&pvh));
    assert!((0x100000..0x100000 + elf.loads[0].2).contains(&elf.entry));
}

#[test]
fn linux64_boot_serial_info() {
    check_full_run(Protocol::Linux64, "linux64");
}

#[test]
fn pvh_boot_serial_info() {
    check_full_run(Protocol::Pvh, "pvh");
}

#[test]
fn unknown_test_fails_and_exits_1() {
    let Some(out) = boot(Protocol::Pvh, "probe.test=boot,nosuch") else {
        return;
    };
    let text = out.text();
    assert_eq!(out.exit, Some(1), "{text}");
    assert!(
        text.contains("probe: nosuch: FAIL unknown test\n"),
        "{text}"
    );
    assert!(text.ends_with("probe: done pass=1 fail=1\n"), "{text}");
}

#[test]
fn no_cmdline_runs_boot() {
    let Some(out) = boot(Protocol::Linux64, "") else {
        return;
    };
    let text = out.text();
    assert_eq!(out.exit, Some(0), "{text}");
    assert!(
        text.contains("probe: boot: PASS mem_mib=255 cpus=1 cmdline_ok=1\n"),
        "{text}"
    );
}

#[test]
fn dirty_stamps_pages_and_counts_passes() {
    use ferry_probe::{DIRTY_COUNTER_GPA, DIRTY_MAGIC, DIRTY_REGION_GPA};
    let Some(vm) = start(Protocol::Linux64, "probe.test=dirty probe.dirty_mib=8") else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm.mem.read_u64(DIRTY_COUNTER_GPA) < 3 {
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            vm.serial_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        vm.serial_text().ends_with("probe: dirty: running\n"),
        "{}",
        vm.serial_text()
    );
    assert_eq!(vm.mem.read_u64(DIRTY_COUNTER_GPA + 8), DIRTY_MAGIC);
    assert_eq!(vm.mem.read_u64(DIRTY_COUNTER_GPA + 16), 8);
    assert_eq!(vm.mem.read_u64(DIRTY_COUNTER_GPA + 24), 0);
    for page in [0u64, 1, 1000, 2047] {
        let gpa = DIRTY_REGION_GPA + page * 4096;
        assert_eq!(vm.mem.read_u64(gpa), page);
        assert!(vm.mem.read_u64(gpa + 8) >= 3);
    }
    // Nothing beyond the region is written.
    assert_eq!(vm.mem.read_u64(DIRTY_REGION_GPA + (8 << 20)), 0);
    vm.stop();
}

#[test]
fn dirty_outside_ram_fails() {
    let Some(out) = boot(Protocol::Pvh, "probe.test=dirty probe.dirty_mib=512") else {
        return;
    };
    let text = out.text();
    assert!(
        text.contains("probe: dirty: FAIL region not in RAM\n"),
        "{text}"
    );
    assert_eq!(out.exit, Some(1));
}

#[test]
fn exceptions_are_reported_as_fail() {
    let Some(out) = boot(Protocol::Linux64, "probe.test=boot,fault,boot") else {
        return;
    };
    let text = out.text();
    assert_eq!(out.exit, Some(1), "{text}");
    assert!(
        text.contains("probe: fault: FAIL exception vector=6 error=0x0 rip=0x"),
        "{text}"
    );
    assert!(text.contains(" cs=0x8 "), "{text}");
    assert!(text.ends_with("probe: done pass=1 fail=1\n"), "{text}");
}

#[test]
fn serial_output_survives_a_uart_that_never_reports_thre() {
    let Some(vm) = start_with_lsr(Protocol::Pvh, "probe.test=serial,boot", 0) else {
        return;
    };
    let out = vm.wait(Duration::from_secs(60));
    let text = out.text();
    assert_eq!(out.exit, Some(0), "{text}");
    assert!(
        text.contains("probe: serial: PASS bytes=4096 crc32=b119fbba\n"),
        "{text}"
    );
    assert!(text.ends_with("probe: done pass=2 fail=0\n"), "{text}");
}
