//! virtio-mmio (modern, version 2) transport and split virtqueues, polled (no interrupts).
//! Register offsets per virtio 1.2 section 4.2.2.

use super::io::{mmio_read32, mmio_write32};
use core::sync::atomic::{fence, Ordering};
use ferry_probe::cmdline::VirtioMmioDev;
use ferry_probe::virtq::{self, SplitLayout};

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus: bit 0 used buffers, bit 1 configuration change.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK: write the bits handled.
pub const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
/// ConfigGeneration: changes whenever the device changes its configuration space.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration space.
pub const CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// Most entries per queue the probe uses.
pub const QUEUE_SIZE: u16 = 16;

/// A virtio-mmio register window.
#[derive(Clone, Copy)]
pub struct Device {
    base: u64,
}

impl Device {
    /// The device at `dev` if it is a modern virtio-mmio device with a non-zero device id;
    /// returns it with its id.
    pub fn probe(dev: &VirtioMmioDev) -> Option<(Device, u32)> {
        if dev.size < 0x100 || dev.addr >= ferry_probe::IDENTITY_MAP_LIMIT || dev.addr & 3 != 0 {
            return None;
        }
        let d = Device { base: dev.addr };
        if d.read(MAGIC) != 0x7472_6976 || d.read(VERSION) != 2 {
            return None;
        }
        let id = d.read(DEVICE_ID);
        (id != 0).then_some((d, id))
    }

    /// Reads a 32-bit register.
    pub fn read(&self, off: u64) -> u32 {
        mmio_read32(self.base + off)
    }

    /// Writes a 32-bit register.
    pub fn write(&self, off: u64, v: u32) {
        mmio_write32(self.base + off, v)
    }

    /// Resets the device and negotiates `wanted` (VERSION_1 required). Returns the accepted
    /// feature bits.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, &'static str> {
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let lo = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let offered = u64::from(lo) | u64::from(self.read(DEVICE_FEATURES)) << 32;
        let accepted = offered & (wanted | F_VERSION_1);
        if accepted & F_VERSION_1 == 0 {
            return Err("device lacks VIRTIO_F_VERSION_1");
        }
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, accepted as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (accepted >> 32) as u32);
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err("FEATURES_OK rejected");
        }
        Ok(accepted)
    }

    /// Sets up queue `index` in `mem` (a 4 KiB-aligned page owned by the caller).
    pub fn queue(&self, index: u32, mem: &'static mut QueueMem) -> Result<Queue, &'static str> {
        self.write(QUEUE_SEL, index);
        let max = self.read(QUEUE_NUM_MAX);
        if max == 0 {
            return Err("queue unavailable");
        }
        let mut size = QUEUE_SIZE;
        while u32::from(size) > max {
            size /= 2;
        }
        let layout = SplitLayout::new(size).ok_or("bad queue size")?;
        mem.0.fill(0);
        let base = mem.0.as_mut_ptr() as u64;
        self.write(QUEUE_NUM, u32::from(size));
        for (reg, addr) in [
            (QUEUE_DESC, base),
            (QUEUE_DRIVER, base + layout.avail as u64),
            (QUEUE_DEVICE, base + layout.used as u64),
        ] {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
        Ok(Queue {
            dev: *self,
            index,
            base,
            layout,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Sets DRIVER_OK.
    pub fn driver_ok(&self) {
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    /// Resets the device (stops all queue processing).
    pub fn reset(&self) {
        self.write(STATUS, 0);
    }
}

/// Page-aligned memory for one queue of up to [`QUEUE_SIZE`] entries.
#[repr(C, align(4096))]
pub struct QueueMem(pub [u8; 4096]);

/// A split virtqueue driven by polling.
pub struct Queue {
    dev: Device,
    index: u32,
    base: u64,
    layout: SplitLayout,
    next_avail: u16,
    last_used: u16,
}

impl Queue {
    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    fn ptr<T>(&self, off: usize) -> *mut T {
        (self.base + off as u64) as *mut T
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.layout.desc(i);
        // SAFETY: inside this queue's page; the device only reads descriptors.
        unsafe {
            self.ptr::<u64>(d).write_volatile(addr);
            self.ptr::<u32>(d + 8).write_volatile(len);
            self.ptr::<u16>(d + 12).write_volatile(flags);
            self.ptr::<u16>(d + 14).write_volatile(next);
        }
    }

    /// Makes the chain starting at descriptor `head` available (no notification).
    pub fn push(&mut self, head: u16) {
        let slot = self.layout.avail_slot(self.next_avail);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: inside this queue's page.
        unsafe {
            self.ptr::<u16>(slot).write_volatile(head);
            fence(Ordering::Release);
            self.ptr::<u16>(self.layout.avail + 2)
                .write_volatile(self.next_avail);
        }
    }

    /// Tells the device to look at the queue.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        self.dev.write(QUEUE_NOTIFY, self.index);
    }

    /// The next used element `(descriptor id, written length)`, if the device published one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: inside this queue's page; the device writes it, hence volatile.
        let used_idx = unsafe { self.ptr::<u16>(self.layout.used + 2).read_volatile() };
        if virtq::pending(self.last_used, used_idx) == 0 {
            return None;
        }
        fence(Ordering::Acquire);
        let e = self.layout.used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        // SAFETY: as above.
        let (id, len) = unsafe {
            (
                self.ptr::<u32>(e).read_volatile(),
                self.ptr::<u32>(e + 4).read_volatile(),
            )
        };
        // A device-supplied id is untrusted: fold it into range.
        Some(((id % u32::from(self.layout.size)) as u16, len))
    }
}
