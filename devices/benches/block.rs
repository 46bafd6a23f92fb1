//! virtio-blk device-path benchmark (no vCPU): requests are placed in guest memory by a test
//! driver and the device's queue processing is called directly.
//!
//! * null backend: requests/s through parse + submit + complete + used ring (4 KiB reads).
//! * file backend (io_uring, page-cache hot): the device path vs the same io_uring reads issued
//!   directly, for 4 KiB random reads and 1 MiB sequential reads; the ratio is what matters.
//!
//! Run: `cargo bench -p ferry-devices --bench block` (add `-- --quick` for a short run,
//! and `null`, `rand` or `seq` to run one part).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_devices::storage::file::open_file;
use ferry_devices::storage::null::NullDisk;
use ferry_devices::storage::raw::RawOptions;
use ferry_devices::storage::uring::EngineKind;
use ferry_devices::storage::DiskBackend;
use ferry_devices::virtio::block::Block;
use ferry_devices::virtio::mmio::MmioTransport;
use ferry_devices::virtio::testing::{drive_to_driver_ok, TestDesc, TestDriver};
use ferry_devices::GuestMemory;
use io_uring::{opcode, types, IoUring};
use vm_memory::{GuestAddress, GuestMemoryBackend};

const MIB: u64 = 1 << 20;
const MEM_SIZE: u64 = 256 * MIB;
const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x20_0000;
const DATA: u64 = 0x100_0000;
const FILE_SIZE: u64 = 256 * MIB;
/// Paired device/raw runs per file workload.
const ROUNDS: usize = 7;

/// One workload: request size split into `segs` equal segments, `depth` requests in flight.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    req_bytes: u64,
    segs: u64,
    depth: u64,
    random: bool,
}

const RAND_4K: Load = Load {
    name: "4 KiB random read",
    req_bytes: 4096,
    segs: 1,
    depth: 32,
    random: true,
};
const SEQ_1M: Load = Load {
    name: "1 MiB sequential read",
    req_bytes: MIB,
    segs: 16,
    depth: 8,
    random: false,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Offsets of successive requests.
struct Offsets {
    load: Load,
    rng: Rng,
    pos: u64,
}

impl Offsets {
    fn new(load: Load) -> Self {
        Self {
            load,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            pos: 0,
        }
    }
    fn next(&mut self) -> u64 {
        let blocks = FILE_SIZE / self.load.req_bytes;
        let b = if self.load.random {
            self.rng.next() % blocks
        } else {
            self.pos = (self.pos + 1) % blocks;
            self.pos
        };
        b * self.load.req_bytes
    }
}

/// The guest driver's side of the ring through raw host pointers, as a guest does natively on
/// its own CPU: the benchmark should time the device, not vm-memory calls made for the driver.
struct FastDriver {
    avail: *mut u16,
    used: *const u8,
    headers: *mut u8,
    status: *const u8,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl FastDriver {
    fn new(mem: &GuestMemory, drv: &TestDriver) -> Self {
        let host = |a: u64| {
            GuestMemoryBackend::get_slice(mem, GuestAddress(a), 1)
                .unwrap()
                .ptr_guard_mut()
                .as_ptr()
        };
        Self {
            avail: host(drv.avail.0).cast(),
            used: host(drv.used.0),
            headers: host(HDR),
            status: host(STATUS),
            size: drv.size,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn set_sector(&self, k: u64, offset: u64) {
        // SAFETY: header k lies in guest memory (set up by dev_rig), 8-byte aligned.
        unsafe {
            std::ptr::write_volatile(
                self.headers.add(16 * k as usize + 8).cast::<u64>(),
                offset / 512,
            )
        };
    }

    fn status(&self, k: u64) -> u8 {
        // SAFETY: status byte k lies in guest memory.
        unsafe { std::ptr::read_volatile(self.status.add(k as usize)) }
    }

    fn push_avail(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: the avail ring lies in guest memory: flags, idx, ring[size].
        unsafe {
            std::ptr::write_volatile(self.avail.add(2 + slot), head.to_le());
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(self.avail.add(1), self.avail_idx.to_le());
        }
    }

    fn pop_used(&mut self) -> Option<u32> {
        // SAFETY: the used ring lies in guest memory: flags, idx, ring[size] of (id, len).
        unsafe {
            let idx = u16::from_le(std::ptr::read_volatile(self.used.add(2).cast::<u16>()));
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            if idx == self.used_seen {
                return None;
            }
            let slot = usize::from(self.used_seen % self.size);
            self.used_seen = self.used_seen.wrapping_add(1);
            Some(u32::from_le(std::ptr::read_volatile(
                self.used.add(4 + 8 * slot).cast::<u32>(),
            )))
        }
    }
}

struct DevRig {
    block: Arc<Mutex<Block>>,
    _t: MmioTransport,
    drv: FastDriver,
    mem: GuestMemory,
    heads: Vec<u16>,
    /// Request slot of each descriptor head.
    slot_of: Vec<u64>,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Device + transport at DRIVER_OK with `load.depth` request chains pre-written: chain k uses
/// header k, status byte k and data area k. Returns with nothing made available yet.
fn dev_rig(backend: Box<dyn DiskBackend>, load: Load) -> DevRig {
    let mem = memory();
    let block = Block::new_shared("bench", backend).unwrap();
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let mut drv = TestDriver::new(mem.clone(), 256, 0x1000);
    drive_to_driver_ok(&mut t, &drv, true);
    let seg = load.req_bytes / load.segs;
    let mut heads = Vec::new();
    let mut slot_of = vec![0; 256];
    for k in 0..load.depth {
        let mut descs = vec![TestDesc::r(HDR + 16 * k, 16)];
        for s in 0..load.segs {
            descs.push(TestDesc::w(DATA + k * load.req_bytes + s * seg, seg as u32));
        }
        descs.push(TestDesc::w(STATUS + k, 1));
        let head = drv.write_chain(&descs);
        slot_of[usize::from(head)] = k;
        heads.push(head);
    }
    DevRig {
        block,
        _t: t,
        drv: FastDriver::new(&mem, &drv),
        mem,
        heads,
        slot_of,
    }
}

/// Runs `total` requests through the device; `notifier` is waited on when nothing completed.
fn run_device(rig: &mut DevRig, load: Load, total: u64, notifier: Option<RawFd>) -> Duration {
    let mut offsets = Offsets::new(load);
    let start = Instant::now();
    let mut issued = 0;
    for k in 0..load.depth.min(total) {
        rig.drv.set_sector(k, offsets.next());
        rig.drv.push_avail(rig.heads[k as usize]);
        issued += 1;
    }
    let mut done = 0;
    while done < total {
        rig.block.lock().unwrap().process_queue();
        let mut got = 0;
        while let Some(head) = rig.drv.pop_used() {
            got += 1;
            done += 1;
            let k = rig.slot_of[head as usize];
            assert_eq!(rig.drv.status(k), 0, "request failed");
            if issued < total {
                rig.drv.set_sector(k, offsets.next());
                rig.drv.push_avail(head as u16);
                issued += 1;
            }
        }
        if got == 0 {
            wait(notifier);
        }
    }
    start.elapsed()
}

fn wait(fd: Option<RawFd>) {
    if let Some(fd) = fd {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 1000) };
    }
}

/// The same reads with io_uring directly: same depth, same buffers, batch submit, wait for at
/// least one completion, refill.
fn run_raw(file: &std::fs::File, mem: &GuestMemory, load: Load, total: u64) -> Duration {
    let mut ring = IoUring::new(256).unwrap();
    let seg = load.req_bytes / load.segs;
    let iovecs: Vec<Vec<libc::iovec>> = (0..load.depth)
        .map(|k| {
            (0..load.segs)
                .map(|s| {
                    let addr = GuestAddress(DATA + k * load.req_bytes + s * seg);
                    let ptr = GuestMemoryBackend::get_slice(mem, addr, seg as usize)
                        .unwrap()
                        .ptr_guard_mut()
                        .as_ptr();
                    libc::iovec {
                        iov_base: ptr.cast(),
                        iov_len: seg as usize,
                    }
                })
                .collect()
        })
        .collect();
    let mut offsets = Offsets::new(load);
    let fd = types::Fd(file.as_raw_fd());
    let push = |ring: &mut IoUring, k: u64, off: u64| {
        let v = &iovecs[k as usize];
        let e = opcode::Readv::new(fd, v.as_ptr(), v.len() as u32)
            .offset(off)
            .build()
            .user_data(k);
        // SAFETY: the iovecs and guest memory outlive the ring's use of them.
        unsafe { ring.submission().push(&e).unwrap() };
    };
    let start = Instant::now();
    let mut issued = 0;
    for k in 0..load.depth.min(total) {
        push(&mut ring, k, offsets.next());
        issued += 1;
    }
    let mut done = 0;
    while done < total {
        ring.submit_and_wait(1).unwrap();
        let finished: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (k, res) in finished {
            assert_eq!(res as u64, load.req_bytes, "raw read failed");
            done += 1;
            if issued < total {
                push(&mut ring, k, offsets.next());
                issued += 1;
            }
        }
    }
    start.elapsed()
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn bench_null(total: u64) {
    let load = Load {
        name: "null 4 KiB read",
        depth: 64,
        ..RAND_4K
    };
    let mut rig = dev_rig(Box::new(NullDisk::new(FILE_SIZE, 128)), load);
    run_device(&mut rig, load, total / 10, None); // warm up
    let mut best = f64::MIN;
    for _ in 0..3 {
        let d = run_device(&mut rig, load, total, None);
        best = best.max(rate(total, d));
    }
    println!(
        "null backend, 4 KiB reads, depth 64: {:.2} M requests/s ({:.0} ns/request)",
        best / 1e6,
        1e9 / best
    );
}

fn bench_file(path: &std::path::Path, load: Load, total: u64) {
    let disk = open_file(
        path,
        &RawOptions {
            engine: EngineKind::Uring,
            queue_depth: 128,
            ..RawOptions::default()
        },
    )
    .unwrap();
    let notifier = disk.notifier();
    let mut rig = dev_rig(Box::new(disk), load);
    let file = std::fs::File::open(path).unwrap();
    run_device(&mut rig, load, total / 10, notifier);
    run_raw(&file, &rig.mem, load, total / 10);
    // Alternate the two so drift on a shared machine hits both alike: report the best rate of
    // each and the median of the ratios of adjacent (device, raw) pairs.
    let (mut dev, mut raw) = (f64::MIN, f64::MIN);
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let d = rate(total, run_device(&mut rig, load, total, notifier));
        let r = rate(total, run_raw(&file, &rig.mem, load, total));
        dev = dev.max(d);
        raw = raw.max(r);
        ratios.push(d / r);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios[ratios.len() / 2];
    let mib = load.req_bytes as f64 / MIB as f64;
    println!(
        "file backend, {} (depth {}): device {:.0} req/s ({:.0} MiB/s), raw io_uring {:.0} req/s ({:.0} MiB/s); device/raw median of {} paired runs {:.2} (range {:.2}-{:.2})",
        load.name,
        load.depth,
        dev,
        dev * mib,
        raw,
        raw * mib,
        ROUNDS,
        median,
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 5 };
    // Optional filter: `null`, `rand` or `seq` runs only that part.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("null") {
        bench_null(400_000 * scale);
    }
    if !run("rand") && !run("seq") {
        return;
    }

    let path = std::env::temp_dir().join(format!("ferry-blk-bench-{}", std::process::id()));
    // Real data (not a sparse file) so reads copy from the page cache like a used disk.
    let chunk = vec![0x5au8; MIB as usize];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..FILE_SIZE / MIB {
            f.write_all(&chunk).unwrap();
        }
    }
    if run("rand") {
        bench_file(&path, RAND_4K, 100_000 * scale);
    }
    if run("seq") {
        bench_file(&path, SEQ_1M, 2_000 * scale);
    }
    let _ = std::fs::remove_file(&path);
}
