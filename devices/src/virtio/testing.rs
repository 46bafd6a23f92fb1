//! A minimal driver side of one split virtqueue in guest memory, for tests and benchmarks: it
//! writes descriptors and avail entries the way a guest driver would, and reads the used ring.
//! Not for production paths (it panics on guest-memory errors, which tests want).

use vm_memory::{Bytes, GuestAddress};

use crate::bus::BusDevice;
use crate::virtio::mmio::MmioTransport;
use crate::GuestMemory;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// One descriptor to place: guest address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct TestDesc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl TestDesc {
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// Driver view of a split queue laid out at `base`.
pub struct TestDriver {
    pub mem: GuestMemory,
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestDriver {
    /// Lays the rings out at `base` (16-byte aligned): descriptor table, avail ring, used ring.
    pub fn new(mem: GuestMemory, size: u16, base: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let d = Self {
            mem,
            size,
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        let ring_bytes = (used + 6 + 8 * u64::from(size)) - desc;
        d.mem
            .write_slice(&vec![0u8; ring_bytes as usize], d.desc)
            .unwrap();
        d
    }

    /// Bytes from `base` used by the rings.
    pub fn ring_end(&self) -> u64 {
        self.used.0 + 6 + 8 * u64::from(self.size)
    }

    /// Writes descriptor `index`.
    pub fn write_desc(&self, table: GuestAddress, index: u16, d: TestDesc, next: Option<u16>) {
        let mut flags = if d.writable { VRING_DESC_F_WRITE } else { 0 };
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT;
        }
        self.write_raw_desc(table, index, d.addr, d.len, flags, next.unwrap_or(0));
    }

    /// Writes a raw descriptor (any flags, any next: for malformed-chain tests).
    pub fn write_raw_desc(
        &self,
        table: GuestAddress,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        let at = GuestAddress(table.0 + 16 * u64::from(index));
        self.mem.write_slice(&b, at).unwrap();
    }

    /// Writes a chain into the next free descriptors (wrapping) and returns its head, without
    /// making it available.
    pub fn write_chain(&mut self, descs: &[TestDesc]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let next = (i + 1 < descs.len()).then_some(idx + 1);
            self.write_desc(self.desc, idx, *d, next);
        }
        self.next_desc += n;
        head
    }

    /// Writes `descs` as an indirect table at `table` and one descriptor pointing to it.
    pub fn write_indirect_chain(&mut self, table: u64, descs: &[TestDesc]) -> u16 {
        for (i, d) in descs.iter().enumerate() {
            let next = (i + 1 < descs.len()).then_some(i as u16 + 1);
            self.write_desc(GuestAddress(table), i as u16, *d, next);
        }
        if self.next_desc + 1 > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        self.write_raw_desc(
            self.desc,
            head,
            table,
            16 * descs.len() as u32,
            VRING_DESC_F_INDIRECT,
            0,
        );
        self.next_desc += 1;
        head
    }

    /// Makes `head` available (writes the ring entry, then publishes the index).
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail.0 + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail.0 + 2))
            .unwrap();
    }

    /// `write_chain` + `push_avail`.
    pub fn add_chain(&mut self, descs: &[TestDesc]) -> u16 {
        let head = self.write_chain(descs);
        self.push_avail(head);
        head
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap())
    }

    /// Next used element `(head, len)` not yet seen.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_seen == self.used_idx() {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        let at = self.used.0 + 4 + 8 * slot;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }

    /// Sets `used_event` (EVENT_IDX): the driver wants an interrupt after this used index.
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail.0 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v.to_le(), GuestAddress(at)).unwrap();
    }

    /// Reads one byte of guest memory.
    pub fn byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
}

fn reg_w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn reg_r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Programs `t` like a guest driver: accepts every offered feature (minus EVENT_IDX unless
/// `event_idx`), configures queue 0 on `drv`'s rings and sets DRIVER_OK. Panics if the
/// transport refuses a step.
pub fn drive_to_driver_ok(t: &mut MmioTransport, drv: &TestDriver, event_idx: bool) {
    drive_queues_to_driver_ok(t, &[Some(drv)], event_idx);
}

/// [`drive_to_driver_ok`] with one driver ring per queue, in index order; `None` leaves that
/// queue not ready (a queue whose feature the driver did not use).
pub fn drive_queues_to_driver_ok(
    t: &mut MmioTransport,
    drvs: &[Option<&TestDriver>],
    event_idx: bool,
) {
    const EVENT_IDX: u64 = 1 << 29;
    reg_w(t, 0x70, 1);
    reg_w(t, 0x70, 3);
    let mut features = 0u64;
    for sel in 0..2 {
        reg_w(t, 0x14, sel);
        features |= u64::from(reg_r(t, 0x10)) << (32 * sel);
    }
    if !event_idx {
        features &= !EVENT_IDX;
    }
    for sel in 0..2u32 {
        reg_w(t, 0x24, sel);
        reg_w(t, 0x20, (features >> (32 * sel)) as u32);
    }
    reg_w(t, 0x70, 0xb);
    assert_eq!(reg_r(t, 0x70), 0xb, "FEATURES_OK refused");
    for (i, drv) in drvs.iter().enumerate() {
        let Some(drv) = drv else { continue };
        reg_w(t, 0x30, i as u32);
        reg_w(t, 0x38, u32::from(drv.size));
        reg_w(t, 0x80, drv.desc.0 as u32);
        reg_w(t, 0x84, (drv.desc.0 >> 32) as u32);
        reg_w(t, 0x90, drv.avail.0 as u32);
        reg_w(t, 0x94, (drv.avail.0 >> 32) as u32);
        reg_w(t, 0xa0, drv.used.0 as u32);
        reg_w(t, 0xa4, (drv.used.0 >> 32) as u32);
        reg_w(t, 0x44, 1);
        assert_eq!(reg_r(t, 0x44), 1, "queue {i} refused");
    }
    reg_w(t, 0x70, 0xf);
    assert_eq!(reg_r(t, 0x70), 0xf, "DRIVER_OK refused");
}
