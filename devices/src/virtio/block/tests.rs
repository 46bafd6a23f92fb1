//! virtio-blk tests: requests built in guest memory by a test driver, processed through the real
//! transport, device and backends.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::Block;
use crate::bus::BusDevice;
use crate::persist::Persist;
use crate::storage::file::open_file;
use crate::storage::null::NullDisk;
use crate::storage::open::open_disk;
use crate::storage::raw::tests::{LoopDev, TempFile};
use crate::storage::raw::RawOptions;
use crate::storage::uring::EngineKind;
use crate::storage::{Completion, DiskBackend, DiskInfo, DiskOp, DiskRequest, SubmitError};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{drive_to_driver_ok, TestDesc, TestDriver};
use crate::GuestMemory;

const MIB: u64 = 1 << 20;
/// Two adjacent regions, so a buffer can straddle them.
const REGION: u64 = 8 * MIB;
const HDR: u64 = 0x10000;
const STATUS: u64 = 0x20000;
const DATA: u64 = 0x100000;
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

struct Rig {
    block: Arc<Mutex<Block>>,
    t: MmioTransport,
    drv: TestDriver,
    mem: GuestMemory,
    /// Per-request header/status address allocator.
    next: u64,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

fn reg_w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn reg_r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Builds device + transport and drives the transport to DRIVER_OK like a guest driver.
fn rig_with(
    backend: Box<dyn DiskBackend>,
    event_idx: bool,
    before_ok: impl FnOnce(&Arc<Mutex<Block>>),
) -> Rig {
    let mem = memory();
    let block = Block::new_shared("drive0", backend).unwrap();
    before_ok(&block);
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let drv = TestDriver::new(mem.clone(), 256, 0x1000);
    drive_to_driver_ok(&mut t, &drv, event_idx);
    Rig {
        block,
        t,
        drv,
        mem,
        next: 0,
    }
}

fn rig(backend: Box<dyn DiskBackend>) -> Rig {
    rig_with(backend, true, |_| {})
}

fn file_backend(f: &TempFile) -> Box<dyn DiskBackend> {
    Box::new(
        open_file(
            &f.0,
            &RawOptions {
                engine: EngineKind::Uring,
                ..RawOptions::default()
            },
        )
        .unwrap(),
    )
}

impl Rig {
    /// Writes a header and returns (header addr, status addr).
    fn header(&mut self, kind: u32, sector: u64) -> (u64, u64) {
        let h = HDR + self.next * 16;
        let s = STATUS + self.next;
        self.next += 1;
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&kind.to_le_bytes());
        b[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&b, GuestAddress(h)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
        (h, s)
    }

    /// Queues a well-formed request; returns (head, status addr).
    fn request(&mut self, kind: u32, sector: u64, data: &[TestDesc]) -> (u16, u64) {
        let (h, s) = self.header(kind, sector);
        let mut descs = vec![TestDesc::r(h, 16)];
        descs.extend_from_slice(data);
        descs.push(TestDesc::w(s, 1));
        (self.drv.add_chain(&descs), s)
    }

    /// Processes until `n` used entries appeared (backends may complete asynchronously).
    fn complete(&mut self, n: usize) -> Vec<(u32, u32)> {
        let mut used = Vec::new();
        for _ in 0..2000 {
            self.block.lock().unwrap().process_queue();
            while let Some(u) = self.drv.pop_used() {
                used.push(u);
            }
            if used.len() >= n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        assert_eq!(used.len(), n, "used entries");
        used
    }

    /// Runs one request to completion and returns its status and used length.
    fn run(&mut self, kind: u32, sector: u64, data: &[TestDesc]) -> (u8, u32) {
        let (head, s) = self.request(kind, sector, data);
        let used = self.complete(1);
        assert_eq!(used[0].0, u32::from(head));
        (self.drv.byte(s), used[0].1)
    }

    /// Runs a raw chain; returns the status byte at `status`.
    fn run_chain(&mut self, descs: &[TestDesc], status: u64) -> u8 {
        self.drv.add_chain(descs);
        self.complete(1);
        self.drv.byte(status)
    }

    fn config_u32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(0x100 + off, &mut b);
        u32::from_le_bytes(b)
    }

    fn capacity(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.t.read(0x100, &mut b);
        u64::from_le_bytes(b)
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn clear_dirty(&self) {
        for r in self.mem.iter() {
            // The mapping's own bitmap (the region trait only hands out slices).
            std::ops::Deref::deref(r).bitmap().reset();
        }
    }

    fn dirty(&self, addr: u64) -> bool {
        let (r, off) = self.mem.to_region_addr(GuestAddress(addr)).unwrap();
        r.bitmap().dirty_at(off.0 as usize)
    }
}

#[test]
fn config_space_and_features() {
    let f = TempFile::new(4 * MIB + 100);
    let mut r = rig(file_backend(&f));
    assert_eq!(r.capacity(), 4 * MIB / 512);
    assert_eq!(r.config_u32(12), super::config::SEG_MAX);
    assert_eq!(r.config_u32(20), 512);
    assert_eq!(r.config_u32(40), 1, "max_discard_seg");
    let mut b = [0xffu8; 4];
    r.t.read(0x100 + 200, &mut b);
    assert_eq!(b, [0; 4], "past config space");
    reg_w(&mut r.t, 0x14, 0);
    let f0 = reg_r(&mut r.t, 0x10);
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f0 & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f0 & (1 << VIRTIO_BLK_F_RO), 0);

    let ro = open_file(
        &f.0,
        &RawOptions {
            read_only: true,
            ..RawOptions::default()
        },
    )
    .unwrap();
    let mut r = rig(Box::new(ro));
    reg_w(&mut r.t, 0x14, 0);
    let f0 = reg_r(&mut r.t, 0x10);
    assert_ne!(f0 & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f0 & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let (st, _) = r.run(VIRTIO_BLK_T_OUT, 0, &[TestDesc::r(DATA, 512)]);
    assert_eq!(st, S_IOERR, "write to a read-only disk");
}

#[test]
fn write_read_roundtrip_marks_dirty() {
    let f = TempFile::new(4 * MIB);
    let mut r = rig(file_backend(&f));
    r.fill(DATA, 4096, 0x11);
    r.fill(DATA + 0x3000, 4096, 0x22);
    let data = [TestDesc::r(DATA, 4096), TestDesc::r(DATA + 0x3000, 4096)];
    assert_eq!(r.run(VIRTIO_BLK_T_OUT, 8, &data), (S_OK, 1));
    let file = std::fs::read(&f.0).unwrap();
    assert!(file[4096..8192].iter().all(|&b| b == 0x11));
    assert!(file[8192..12288].iter().all(|&b| b == 0x22));

    r.clear_dirty();
    let rd = DATA + 0x10000;
    let (head, s) = r.request(VIRTIO_BLK_T_IN, 8, &[TestDesc::w(rd, 8192)]);
    // Only the device's writes count from here.
    r.clear_dirty();
    let used = r.complete(1);
    assert_eq!(used[0], (u32::from(head), 8193));
    assert_eq!(r.drv.byte(s), S_OK);
    assert_eq!(r.bytes(rd, 8192)[..4096], [0x11; 4096]);
    assert_eq!(r.bytes(rd, 8192)[4096..], [0x22; 4096]);
    assert!(r.dirty(rd) && r.dirty(rd + 4096), "read data marked dirty");
    assert!(r.dirty(s), "status marked dirty");
    assert!(r.dirty(r.drv.used.0), "used ring marked dirty");
    assert!(!r.dirty(DATA), "untouched page stays clean");

    assert_eq!(r.run(VIRTIO_BLK_T_FLUSH, 0, &[]), (S_OK, 1));
    let m = r.block.lock().unwrap().metrics();
    assert_eq!(m.requests.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        m.read_bytes.load(std::sync::atomic::Ordering::Relaxed),
        8192
    );
    assert_eq!(
        m.write_bytes.load(std::sync::atomic::Ordering::Relaxed),
        8192
    );
}

#[test]
fn get_id_and_unsupported_types() {
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    assert_eq!(
        r.run(VIRTIO_BLK_T_GET_ID, 0, &[TestDesc::w(DATA, 20)]),
        (S_OK, 21)
    );
    assert_eq!(
        &r.bytes(DATA, 20)[..],
        b"drive0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );
    r.fill(DATA, 20, 0xee);
    assert_eq!(
        r.run(VIRTIO_BLK_T_GET_ID, 0, &[TestDesc::w(DATA, 4)]),
        (S_OK, 5)
    );
    assert_eq!(r.bytes(DATA, 6), b"driv\xee\xee");
    assert_eq!(r.run(VIRTIO_BLK_T_SCSI_CMD, 0, &[]).0, S_UNSUPP);
    assert_eq!(r.run(12345, 0, &[]).0, S_UNSUPP);
}

#[test]
fn invalid_requests_get_ioerr() {
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    let sectors = MIB / 512;
    let cases: Vec<(u32, u64, Vec<TestDesc>)> = vec![
        (VIRTIO_BLK_T_IN, sectors, vec![TestDesc::w(DATA, 512)]),
        (VIRTIO_BLK_T_IN, sectors - 1, vec![TestDesc::w(DATA, 1024)]),
        (
            VIRTIO_BLK_T_IN,
            u64::MAX / 256,
            vec![TestDesc::w(DATA, 512)],
        ),
        (VIRTIO_BLK_T_IN, 0, vec![TestDesc::w(DATA, 100)]),
        // Outside guest memory, and straddling the two regions.
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![TestDesc::w(2 * REGION - 512, 1024)],
        ),
        (VIRTIO_BLK_T_IN, 0, vec![TestDesc::w(REGION - 512, 1024)]),
        (VIRTIO_BLK_T_OUT, 0, vec![TestDesc::r(u64::MAX - 511, 512)]),
        // Data on the wrong side.
        (VIRTIO_BLK_T_IN, 0, vec![TestDesc::r(DATA, 512)]),
        (VIRTIO_BLK_T_OUT, 0, vec![TestDesc::w(DATA, 512)]),
    ];
    for (kind, sector, data) in cases {
        r.fill(DATA, 1024, 0x77);
        assert_eq!(
            r.run(kind, sector, &data).0,
            S_IOERR,
            "{kind} {sector} {data:?}"
        );
        assert_eq!(
            r.bytes(DATA, 1024),
            vec![0x77; 1024],
            "guest buffer untouched"
        );
    }
    // Header too short, and readable after writable.
    let (h, s) = r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        r.run_chain(&[TestDesc::r(h, 8), TestDesc::w(s, 1)], s),
        S_IOERR
    );
    let (h, s) = r.header(VIRTIO_BLK_T_IN, 0);
    let chain = [
        TestDesc::w(DATA, 512),
        TestDesc::r(h, 16),
        TestDesc::w(s, 1),
    ];
    assert_eq!(r.run_chain(&chain, s), S_IOERR);
    // Still healthy.
    assert_eq!(reg_r(&mut r.t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(r.run(VIRTIO_BLK_T_IN, 0, &[TestDesc::w(DATA, 512)]).0, S_OK);
}

#[test]
fn chain_without_status_needs_reset() {
    for bad_last in [
        TestDesc::r(STATUS, 1),
        TestDesc::w(4 * REGION, 1),
        TestDesc::w(STATUS, 0),
    ] {
        let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
        let irq = r.t.interrupt_evt().try_clone().unwrap();
        let (h, _) = r.header(VIRTIO_BLK_T_IN, 0);
        r.drv.add_chain(&[TestDesc::r(h, 16), bad_last]);
        r.block.lock().unwrap().process_queue();
        assert_eq!(r.drv.used_idx(), 0, "nothing completed");
        assert_ne!(reg_r(&mut r.t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(reg_r(&mut r.t, 0x60) & 2, 2, "config interrupt");
        assert_eq!(irq.read().unwrap(), 1);
        // Broken: later requests wait for the reset.
        r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.block.lock().unwrap().process_queue();
        assert_eq!(r.drv.used_idx(), 0);
        reg_w(&mut r.t, 0x70, 0);
        assert_eq!(reg_r(&mut r.t, 0x70), 0);
    }
}

#[test]
fn any_layout_and_indirect_chains() {
    let f = TempFile::new(MIB);
    let mut r = rig(file_backend(&f));
    // Header and data in one readable descriptor.
    let (h, s) = r.header(VIRTIO_BLK_T_OUT, 2);
    r.fill(h + 16, 1024, 0x3c);
    r.mem
        .write_slice(&r.bytes(h, 16), GuestAddress(DATA))
        .unwrap();
    r.fill(DATA + 16, 1024, 0x3c);
    assert_eq!(
        r.run_chain(&[TestDesc::r(DATA, 16 + 1024), TestDesc::w(s, 1)], s),
        S_OK
    );
    assert_eq!(std::fs::read(&f.0).unwrap()[1024..2048], [0x3c; 1024]);
    // Data and status in one writable descriptor, split header.
    let (h, _) = r.header(VIRTIO_BLK_T_IN, 2);
    let buf = DATA + 0x10000;
    let chain = [
        TestDesc::r(h, 5),
        TestDesc::r(h + 5, 11),
        TestDesc::w(buf, 1025),
    ];
    assert_eq!(r.run_chain(&chain, buf + 1024), S_OK);
    assert_eq!(r.bytes(buf, 1024), vec![0x3c; 1024]);
    // Indirect table.
    let (h, s) = r.header(VIRTIO_BLK_T_IN, 2);
    let buf = DATA + 0x20000;
    let head = r.drv.write_indirect_chain(
        0x8000,
        &[
            TestDesc::r(h, 16),
            TestDesc::w(buf, 512),
            TestDesc::w(buf + 512, 512),
            TestDesc::w(s, 1),
        ],
    );
    r.drv.push_avail(head);
    assert_eq!(r.complete(1)[0], (u32::from(head), 1025));
    assert_eq!(r.drv.byte(s), S_OK);
    assert_eq!(r.bytes(buf, 1024), vec![0x3c; 1024]);
}

fn range(r: &mut Rig, kind: u32, sector: u64, sectors: u32, flags: u32) -> u8 {
    let seg = DATA + 0x40000 + r.next * 16;
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    r.mem.write_slice(&b, GuestAddress(seg)).unwrap();
    r.run(kind, 0, &[TestDesc::r(seg, 16)]).0
}

#[test]
fn discard_and_write_zeroes() {
    let f = TempFile::new(MIB);
    std::fs::write(&f.0, vec![0x99u8; MIB as usize]).unwrap();
    let mut r = rig(file_backend(&f));
    assert_eq!(range(&mut r, VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, 0), S_OK);
    assert_eq!(range(&mut r, VIRTIO_BLK_T_DISCARD, 64, 8, 0), S_OK);
    let data = std::fs::read(&f.0).unwrap();
    assert!(data[4096..8192].iter().all(|&b| b == 0));
    assert!(data[8192..32768].iter().all(|&b| b == 0x99));
    assert_eq!(
        range(
            &mut r,
            VIRTIO_BLK_T_DISCARD,
            0,
            8,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        ),
        S_UNSUPP
    );
    assert_eq!(
        range(
            &mut r,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            8,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        ),
        S_OK
    );
    assert_eq!(range(&mut r, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 2), S_UNSUPP);
    assert_eq!(
        range(&mut r, VIRTIO_BLK_T_DISCARD, MIB / 512 - 4, 8, 0),
        S_IOERR
    );
    // Two segments: more than max_discard_seg.
    let seg = DATA + 0x50000;
    r.fill(seg, 32, 0);
    assert_eq!(
        r.run(VIRTIO_BLK_T_DISCARD, 0, &[TestDesc::r(seg, 32)]).0,
        S_UNSUPP
    );
    assert_eq!(
        r.run(VIRTIO_BLK_T_DISCARD, 0, &[TestDesc::r(seg, 15)]).0,
        S_IOERR
    );
}

/// A backend that accepts `limit` requests, then says Busy; completes what the test releases.
#[derive(Default)]
struct GateState {
    limit: usize,
    held: Vec<u64>,
    released: Vec<u64>,
    submitted: Vec<u64>,
}

struct Gate(Arc<Mutex<GateState>>);

impl DiskBackend for Gate {
    fn info(&self) -> DiskInfo {
        DiskInfo {
            size_bytes: MIB,
            logical_block_size: 512,
            read_only: false,
            discard: false,
            write_zeroes: false,
        }
    }
    fn refresh(&mut self) -> io::Result<DiskInfo> {
        Ok(self.info())
    }
    fn queue_depth(&self) -> usize {
        8
    }
    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        let mut s = self.0.lock().unwrap();
        if s.held.len() + s.released.len() >= s.limit {
            return Err(SubmitError::Busy);
        }
        s.held.push(req.tag);
        s.submitted.push(req.offset);
        Ok(())
    }
    fn kick(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn notifier(&self) -> Option<RawFd> {
        None
    }
    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        for tag in self.0.lock().unwrap().released.drain(..) {
            out.push(Completion {
                tag,
                result: Ok(512),
            });
        }
    }
    fn in_flight(&self) -> usize {
        let s = self.0.lock().unwrap();
        s.held.len() + s.released.len()
    }
}

fn release_all(g: &Arc<Mutex<GateState>>) {
    let mut s = g.lock().unwrap();
    let held: Vec<u64> = s.held.drain(..).collect();
    s.released.extend(held);
}

#[test]
fn busy_backend_keeps_requests_in_order() {
    let gate = Arc::new(Mutex::new(GateState {
        limit: 2,
        ..GateState::default()
    }));
    let mut r = rig(Box::new(Gate(gate.clone())));
    let mut heads = Vec::new();
    for i in 0..5u64 {
        heads.push(
            r.request(VIRTIO_BLK_T_IN, i, &[TestDesc::w(DATA + i * 512, 512)])
                .0,
        );
    }
    // Guest kicks repeatedly while the backend is full: nothing is lost or duplicated.
    for _ in 0..3 {
        r.block.lock().unwrap().process_queue();
    }
    assert_eq!(gate.lock().unwrap().submitted, [0, 512]);
    assert_eq!(r.drv.used_idx(), 0);
    let mut used = Vec::new();
    for _ in 0..3 {
        release_all(&gate);
        r.block.lock().unwrap().process_queue();
        while let Some(u) = r.drv.pop_used() {
            used.push(u.0 as u16);
        }
    }
    assert_eq!(used, heads, "each request completed once, in order");
    assert_eq!(gate.lock().unwrap().submitted, [0, 512, 1024, 1536, 2048]);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    let irq = r.t.interrupt_evt().try_clone().unwrap();
    // The driver wants an interrupt only once used idx passes 2.
    r.drv.set_used_event(2);
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.complete(1);
    assert!(irq.read().is_err(), "no interrupt for the first completion");
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.complete(2);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(reg_r(&mut r.t, 0x60) & 1, 1);

    // Without EVENT_IDX every batch interrupts.
    let mut r = rig_with(Box::new(NullDisk::new(MIB, 8)), false, |_| {});
    let irq = r.t.interrupt_evt().try_clone().unwrap();
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.complete(1);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn refresh_capacity_signals_config_change() {
    let f = TempFile::new(MIB);
    let mut r = rig(file_backend(&f));
    let gen = reg_r(&mut r.t, 0xfc);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.0)
        .unwrap()
        .set_len(3 * MIB)
        .unwrap();
    let cap = r.block.lock().unwrap().refresh_capacity().unwrap();
    assert_eq!(cap, 3 * MIB);
    assert_eq!(r.capacity(), 3 * MIB / 512);
    assert_eq!(reg_r(&mut r.t, 0xfc), gen + 1);
    assert_eq!(reg_r(&mut r.t, 0x60) & 2, 2);
    // The new space is usable.
    assert_eq!(
        r.run(VIRTIO_BLK_T_IN, 2 * MIB / 512, &[TestDesc::w(DATA, 512)])
            .0,
        S_OK
    );
    // Same size again: no new generation.
    r.block.lock().unwrap().refresh_capacity().unwrap();
    assert_eq!(reg_r(&mut r.t, 0xfc), gen + 1);
}

#[test]
fn reset_drains_in_flight_io() {
    let f = TempFile::new(MIB);
    let mut r = rig(file_backend(&f));
    for i in 0..8 {
        r.request(
            VIRTIO_BLK_T_IN,
            i * 8,
            &[TestDesc::w(DATA + i * 4096, 4096)],
        );
    }
    r.block.lock().unwrap().process_queue();
    reg_w(&mut r.t, 0x70, 0);
    let b = r.block.lock().unwrap();
    assert_eq!(b.backend.in_flight(), 0);
    assert_eq!(b.free_slots.len(), b.slots.len());
    assert!(b.active.is_none());
}

#[test]
fn save_restore_continues_the_queue() {
    let f = TempFile::new(MIB);
    let mut r = rig(file_backend(&f));
    r.fill(DATA, 512, 0x42);
    assert_eq!(
        r.run(VIRTIO_BLK_T_OUT, 1, &[TestDesc::r(DATA, 512)]).0,
        S_OK
    );
    // One request in flight at pause time.
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.block.lock().unwrap().process_queue();
    r.block.lock().unwrap().quiesce().unwrap();
    let block_state = r.block.lock().unwrap().save_state();
    let t_state = r.t.save_state();
    assert_eq!(t_state.queues[0].next_used, 2);

    // Destination: same memory (as migrated), fresh device and transport.
    let block2 = Block::new_shared("drive0", file_backend(&f)).unwrap();
    block2.lock().unwrap().restore_state(&block_state).unwrap();
    let mut t2 = MmioTransport::new(r.mem.clone(), block2.clone()).unwrap();
    t2.restore_state(&t_state).unwrap();
    assert_eq!(reg_r(&mut t2, 0x70), 0xf);
    r.block = block2;
    r.t = t2;
    while r.drv.pop_used().is_some() {}
    let (st, len) = r.run(VIRTIO_BLK_T_IN, 1, &[TestDesc::w(DATA + 4096, 512)]);
    assert_eq!((st, len), (S_OK, 513));
    assert_eq!(r.bytes(DATA + 4096, 512), vec![0x42; 512]);
    assert_eq!(r.drv.used_idx(), 3);

    // A state that acked features this disk does not offer is refused.
    let mut bad = block_state;
    bad.acked_features |= 1 << 50;
    assert!(Block::new("x", file_backend(&f))
        .unwrap()
        .restore_state(&bad)
        .is_err());
}

#[test]
fn event_loop_activation_and_kick() {
    let f = TempFile::new(MIB);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    let mut subscribed = None;
    let mut r = rig_with(file_backend(&f), true, |b| {
        subscribed = Some(b.clone());
    });
    // The VMM adds the subscriber at build time; activation already wrote the activate fd.
    let _id = em.add_subscriber(subscribed.unwrap());
    let irq = r.t.interrupt_evt().try_clone().unwrap();
    em.run_with_timeout(100).unwrap(); // activation: fds registered
    r.fill(DATA, 512, 0x5e);
    let (head, s) = r.request(VIRTIO_BLK_T_OUT, 3, &[TestDesc::r(DATA, 512)]);
    reg_w(&mut r.t, 0x50, 0); // QueueNotify (the ioeventfd path writes the same eventfd)
    for _ in 0..50 {
        em.run_with_timeout(100).unwrap();
        if r.drv.used_idx() == 1 {
            break;
        }
    }
    assert_eq!(r.drv.pop_used(), Some((u32::from(head), 1)));
    assert_eq!(r.drv.byte(s), S_OK);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(std::fs::read(&f.0).unwrap()[1536..2048], [0x5e; 512]);
}

#[test]
fn backend_ops_reach_the_disk_as_requested() {
    // The slot contents handed to the backend: offsets, lengths and ops.
    let gate = Arc::new(Mutex::new(GateState {
        limit: 8,
        ..GateState::default()
    }));
    let mut r = rig(Box::new(Gate(gate.clone())));
    r.request(
        VIRTIO_BLK_T_IN,
        7,
        &[TestDesc::w(DATA, 512), TestDesc::w(DATA + 8192, 1024)],
    );
    r.block.lock().unwrap().process_queue();
    assert_eq!(gate.lock().unwrap().submitted, [7 * 512]);
    let b = r.block.lock().unwrap();
    let slot = b.slots.iter().find(|s| s.op == DiskOp::Read).unwrap();
    assert_eq!(slot.len, 1536);
    assert_eq!(slot.bufs.len(), 2);
    assert_eq!(slot.addrs, [GuestAddress(DATA), GuestAddress(DATA + 8192)]);
    let host = GuestMemoryBackend::get_slice(&r.mem, GuestAddress(DATA + 8192), 1)
        .unwrap()
        .ptr_guard_mut()
        .as_ptr();
    assert_eq!(slot.bufs[1].ptr, host);
}

#[test]
fn avail_index_running_ahead_needs_reset() {
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    assert_eq!(r.run(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    // The driver claims 300 new entries in a 256-entry ring.
    let idx_addr = GuestAddress(r.drv.avail.0 + 2);
    r.mem.write_obj(301u16.to_le(), idx_addr).unwrap();
    r.block.lock().unwrap().process_queue();
    assert_eq!(r.drv.used_idx(), 1, "nothing consumed");
    assert_ne!(reg_r(&mut r.t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn many_requests_wrap_the_rings() {
    // More requests than the ring has entries: indexes wrap, every request completes once.
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    for round in 0..7u64 {
        // 80 chains of 3 descriptors fit the 256-entry table without reuse in flight.
        for i in 0..80u64 {
            let sector = (round * 80 + i) % 2048;
            let (_, s) = r.request(VIRTIO_BLK_T_IN, sector, &[TestDesc::w(DATA + i * 512, 512)]);
            assert_eq!(r.drv.byte(s), 0xff);
        }
        r.next = 0;
        let used = r.complete(80);
        assert!(used.iter().all(|&(_, len)| len == 513));
    }
    assert_eq!(r.drv.used_idx(), 560);
    let state = r.t.save_state();
    assert_eq!(state.queues[0].next_avail, 560);
    assert_eq!(state.queues[0].next_used, 560);
}

#[test]
fn random_garbage_chains_never_panic_or_escape() {
    // Hostile driver: plausible chains with random mutations (addresses anywhere, odd lengths,
    // wrong flags, bad next links, random headers and sectors), plus some fully random
    // descriptors. The device must not panic, must keep working after a reset, and must not
    // leak request slots.
    let f = TempFile::new(MIB);
    let mut r = rig(file_backend(&f));
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut resets = 0;
    for round in 0..300u64 {
        let mut next_desc = 0u16;
        for c in 0..8u64 {
            let head = next_desc;
            let (h, st) = r.header((rnd() % 16) as u32, rnd() % 2200);
            let mut descs = vec![(h, 16u32, 0u16)];
            for _ in 0..rnd() % 4 {
                let v = rnd();
                let addr = match v % 4 {
                    0 => v >> 8,
                    1 => DATA + c * 0x4000 + (v >> 8) % 0x2000,
                    2 => REGION - (v >> 8) % 1024,
                    _ => DATA + c * 0x4000,
                };
                let len = match (v >> 3) % 4 {
                    0 => 512,
                    1 => 4096,
                    2 => ((v >> 16) % 9000) as u32,
                    _ => (v >> 32) as u32,
                };
                descs.push((addr, len, if v & (1 << 60) != 0 { 2 } else { 0 }));
            }
            descs.push((st, 1, 2));
            for (i, (addr, len, mut flags)) in descs.iter().copied().enumerate() {
                let mut next = next_desc + 1;
                if i + 1 < descs.len() {
                    flags |= 1;
                }
                let v = rnd();
                if v.is_multiple_of(16) {
                    flags ^= 1 << ((v >> 8) % 3); // flip NEXT, WRITE or INDIRECT
                }
                if v % 32 == 1 {
                    next = ((v >> 16) % 300) as u16;
                }
                r.drv
                    .write_raw_desc(r.drv.desc, next_desc, addr, len, flags, next);
                next_desc += 1;
            }
            r.drv.push_avail(head);
        }
        r.next = 0;
        r.block.lock().unwrap().process_queue();
        r.block.lock().unwrap().process_queue();
        let broken = reg_r(&mut r.t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        if broken || round % 25 == 24 {
            // Reset and set the device up again, as a recovering driver would.
            resets += 1;
            reg_w(&mut r.t, 0x70, 0);
            r.drv = TestDriver::new(r.mem.clone(), 256, 0x1000);
            drive_to_driver_ok(&mut r.t, &r.drv, round.is_multiple_of(2));
        } else {
            // Let in-flight I/O finish so the next round may reuse the descriptors.
            for _ in 0..200 {
                r.block.lock().unwrap().process_queue();
                if r.block.lock().unwrap().backend.in_flight() == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }
    reg_w(&mut r.t, 0x70, 0);
    r.drv = TestDriver::new(r.mem.clone(), 256, 0x1000);
    drive_to_driver_ok(&mut r.t, &r.drv, true);
    r.next = 0;
    assert_eq!(r.run(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    let b = r.block.lock().unwrap();
    assert_eq!(b.free_slots.len(), b.slots.len(), "no slot leaked");
    let m = b.metrics();
    let (done, errors) = (
        m.requests.load(std::sync::atomic::Ordering::Relaxed),
        m.errors.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("garbage run: {done} requests completed, {errors} with errors, {resets} resets");
    assert!(
        done > 500 && errors > 100 && done > errors,
        "the garbage reached the parser"
    );
}

#[test]
fn device_over_loop_device_and_sync_engine() {
    // The whole path over a host block device with O_DIRECT (aligned and unaligned guest
    // buffers), then over a file with the synchronous engine.
    let mut backends: Vec<Box<dyn DiskBackend>> = Vec::new();
    let _lo = LoopDev::new(4 * MIB).inspect(|lo| {
        backends.push(open_disk(&lo.dev, false, None).unwrap());
    });
    let f = TempFile::new(4 * MIB);
    let sync = RawOptions {
        engine: EngineKind::Sync,
        ..RawOptions::default()
    };
    backends.push(Box::new(open_file(&f.0, &sync).unwrap()));
    for backend in backends {
        let mut r = rig(backend);
        assert_eq!(r.capacity(), 4 * MIB / 512);
        for (i, (addr, sector)) in [(DATA, 8u64), (DATA + 0x10200, 3)].into_iter().enumerate() {
            r.fill(addr, 4096, 0x30 + i as u8);
            let data = [TestDesc::r(addr, 1024), TestDesc::r(addr + 1024, 3072)];
            assert_eq!(r.run(VIRTIO_BLK_T_OUT, sector, &data).0, S_OK);
            let back = DATA + 0x40000 + 0x10000 * i as u64;
            let (st, len) = r.run(VIRTIO_BLK_T_IN, sector, &[TestDesc::w(back, 4096)]);
            assert_eq!((st, len), (S_OK, 4097));
            assert_eq!(r.bytes(back, 4096), vec![0x30 + i as u8; 4096]);
        }
        assert_eq!(r.run(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
        assert_eq!(range(&mut r, VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, 0), S_OK);
        let (st, _) = r.run(VIRTIO_BLK_T_IN, 8, &[TestDesc::w(DATA, 4096)]);
        assert_eq!(st, S_OK);
        assert_eq!(r.bytes(DATA, 4096), vec![0; 4096]);
    }
}

/// Records the operations it is given and completes each at once.
struct Recorder {
    ops: Arc<Mutex<Vec<DiskOp>>>,
    done: Vec<Completion>,
    read_only: bool,
}

impl DiskBackend for Recorder {
    fn info(&self) -> DiskInfo {
        DiskInfo {
            size_bytes: MIB,
            logical_block_size: 512,
            read_only: self.read_only,
            discard: false,
            write_zeroes: false,
        }
    }
    fn refresh(&mut self) -> io::Result<DiskInfo> {
        Ok(self.info())
    }
    fn queue_depth(&self) -> usize {
        8
    }
    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        self.ops.lock().unwrap().push(req.op);
        self.done.push(Completion {
            tag: req.tag,
            result: Ok(0),
        });
        Ok(())
    }
    fn kick(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn notifier(&self) -> Option<RawFd> {
        None
    }
    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

#[test]
fn quiesce_flushes_a_writable_backend_once_and_a_read_only_one_never() {
    for read_only in [false, true] {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let backend = Recorder {
            ops: ops.clone(),
            done: Vec::new(),
            read_only,
        };
        let block = Block::new_shared("d", Box::new(backend)).unwrap();
        block.lock().unwrap().quiesce().unwrap();
        let expected: &[DiskOp] = if read_only { &[] } else { &[DiskOp::Flush] };
        assert_eq!(
            ops.lock().unwrap().as_slice(),
            expected,
            "read_only={read_only}"
        );
    }
}

fn bandwidth_limit(size: u64, refill_time_ms: u64) -> crate::rate_limiter::RateLimiterConfig {
    crate::rate_limiter::RateLimiterConfig {
        bandwidth: Some(crate::rate_limiter::TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }),
        ops: None,
    }
}

#[test]
fn rate_limited_requests_wait_for_the_timer_in_order() {
    // 8 KiB per 20 ms. Writes of 4 KiB, and one of 24 KiB (larger than the bucket), through
    // the event loop: the limiter holds requests back, its timerfd resumes the queue, every
    // request reaches the disk once and in order with its data.
    let f = TempFile::new(MIB);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    let mut subscribed = None;
    let mut r = rig_with(file_backend(&f), true, |b| {
        b.lock()
            .unwrap()
            .set_rate_limiter(&bandwidth_limit(8192, 20));
        subscribed = Some(b.clone());
    });
    let _id = em.add_subscriber(subscribed.unwrap());
    em.run_with_timeout(100).unwrap();
    let sizes: Vec<u64> = vec![4096, 4096, 4096, 24576, 4096, 4096, 4096, 4096];
    let mut heads = Vec::new();
    let mut sector = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let addr = DATA + i as u64 * 32768;
        r.fill(addr, len as usize, i as u8 + 1);
        heads.push(
            r.request(VIRTIO_BLK_T_OUT, sector, &[TestDesc::r(addr, len as u32)])
                .0,
        );
        sector += len / 512;
    }
    reg_w(&mut r.t, 0x50, 0);
    let mut used = Vec::new();
    // Bounded by iterations, not by time: at least 6 refills are needed.
    for _ in 0..500 {
        em.run_with_timeout(100).unwrap();
        while let Some(u) = r.drv.pop_used() {
            used.push(u.0 as u16);
        }
        if used.len() == sizes.len() {
            break;
        }
    }
    assert_eq!(used, heads, "every request completed once, in order");
    let metrics = r.block.lock().unwrap().metrics();
    assert!(metrics.throttled.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    let disk = std::fs::read(&f.0).unwrap();
    let mut off = 0usize;
    for (i, &len) in sizes.iter().enumerate() {
        assert!(
            disk[off..off + len as usize]
                .iter()
                .all(|&b| b == i as u8 + 1),
            "request {i}'s data"
        );
        off += len as usize;
    }
}

#[test]
fn rate_limited_request_survives_quiesce_and_limit_removal() {
    let mut r = rig(Box::new(NullDisk::new(MIB, 8)));
    // Ops limit: 1 request per 100 s (the test never waits for it).
    r.block
        .lock()
        .unwrap()
        .set_rate_limiter(&crate::rate_limiter::RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::rate_limiter::TokenBucketConfig {
                size: 1,
                one_time_burst: 1,
                refill_time_ms: 100_000,
            }),
        });
    let mut heads = Vec::new();
    for i in 0..4u64 {
        heads.push(
            r.request(VIRTIO_BLK_T_IN, i, &[TestDesc::w(DATA + i * 512, 512)])
                .0,
        );
    }
    // Guest kicks while throttled: counted once, nothing lost.
    for _ in 0..3 {
        r.block.lock().unwrap().process_queue();
    }
    // Burst 1 + bucket 1: two requests, the third is held, the fourth still in the ring.
    assert_eq!(r.drv.used_idx(), 2);
    let throttled = r.block.lock().unwrap().metrics();
    assert_eq!(
        throttled
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(r.t.save_state().queues[0].next_avail, 3);
    // Saving the VM: the held request completes; the fourth stays in the ring.
    r.block.lock().unwrap().quiesce().unwrap();
    assert_eq!(r.drv.used_idx(), 3);
    assert_eq!(r.t.save_state().queues[0].next_avail, 3);
    // Removing the limit lets the rest through.
    r.block
        .lock()
        .unwrap()
        .set_rate_limiter(&crate::rate_limiter::RateLimiterConfig::default());
    r.block.lock().unwrap().process_queue();
    let mut used = Vec::new();
    while let Some(u) = r.drv.pop_used() {
        used.push(u.0 as u16);
    }
    assert_eq!(used, heads, "each request completed once, in order");
    let saved = r.block.lock().unwrap().save_state();
    assert_eq!(saved.rate_limiter, Default::default());
}

mod swap;
