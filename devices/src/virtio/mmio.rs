//! The virtio-mmio transport, modern interface (virtio 1.2 §4.2.2, Version = 2).
//!
//! Every register write is checked against the device status so a confused or hostile driver
//! cannot put the device in an inconsistent state: feature words only before FEATURES_OK, queue
//! configuration only between FEATURES_OK and DRIVER_OK on a queue that is not ready, queue sizes
//! that are powers of two not above the maximum, rings aligned and inside guest memory. Refused
//! writes are ignored (logged at debug level), as the spec asks; nothing here panics.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::bus::BusDevice;
use crate::GuestMemory;

mod persist;
#[cfg(test)]
mod tests;

pub use persist::{MmioTransportState, QueueSnapshot};

/// Size of a virtio-mmio device's MMIO window (registers + config space).
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where the VMM places the queue ioeventfds.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "FRRY" — any value is valid; drivers only print it.
const VENDOR_ID: u32 = 0x5952_5246;
const CONFIG_SPACE: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const VENDOR_ID: u64 = 0x0c;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    pub const CONFIG_GENERATION: u64 = 0xfc;
}

/// The virtio-mmio register file in front of one [`VirtioDevice`].
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    /// Driver-side queue configuration; moved (as copies) into the device at DRIVER_OK.
    queues: Vec<Queue>,
    queue_evts: Vec<Arc<EventFd>>,
    device_type: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver set a bit in a feature word above 64 (none exists).
    unknown_features_acked: bool,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Builds the transport; creates one notify eventfd per device queue and the irqfd.
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>) -> std::io::Result<Self> {
        let (device_type, device_features, max_sizes) = {
            let dev = lock(&device);
            (
                dev.device_type(),
                dev.avail_features() | (1 << VIRTIO_F_VERSION_1),
                dev.queue_max_sizes().to_vec(),
            )
        };
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_evts = Vec::with_capacity(max_sizes.len());
        for max in max_sizes {
            let queue = Queue::new(max).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("device queue max size {max}: {e}"),
                )
            })?;
            queues.push(queue);
            queue_evts.push(Arc::new(EventFd::new(EFD_NONBLOCK)?));
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new()?),
            queues,
            queue_evts,
            device_type,
            device_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            unknown_features_acked: false,
            queue_sel: 0,
            status: 0,
            activated: false,
        })
    }

    /// `(queue index, eventfd)` pairs: register each as an ioeventfd at `base + 0x50`
    /// ([`NOTIFY_REG_OFFSET`]), 4 bytes, `datamatch = queue index`.
    pub fn queue_notify_evts(&self) -> Vec<(u32, &EventFd)> {
        (0u32..)
            .zip(self.queue_evts.iter().map(|e| e.as_ref()))
            .collect()
    }

    /// The eventfd to register as an irqfd on the device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.irq_evt()
    }

    /// The interrupt shared with the device (for tests and for devices built before activation).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The status register as the driver sees it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue that is not
    /// live yet (virtio 1.2 §4.2.3.2).
    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
            && !self.interrupt.needs_reset()
    }

    fn with_config_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            log::debug!(
                "virtio-mmio: queue write refused in status {:#x}",
                self.status
            );
            return;
        }
        match self.selected_queue() {
            Some(q) if !q.ready() => f(q),
            Some(_) => log::debug!("virtio-mmio: queue write to a ready queue ignored"),
            None => log::debug!("virtio-mmio: queue write to a missing queue ignored"),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let mem = self.mem.clone();
        self.with_config_queue(|q| {
            if value != 1 {
                return;
            }
            q.set_ready(true);
            // is_valid checks the size and that all three rings lie in guest memory.
            if q.size() == 0 || !q.is_valid(&mem) {
                log::warn!("virtio-mmio: driver enabled an invalid queue; refusing");
                q.set_ready(false);
            }
        });
        // Ready=0 on a ready queue is a queue reset, which needs VIRTIO_F_RING_RESET (not
        // offered): ignored, like every other write to a ready queue.
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::debug!("virtio-mmio: status write {value:#x} clears bits of {old:#x}; ignored");
            return;
        }
        let new_bits = value & !old;
        if new_bits & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // Each step needs the previous ones (§3.1.1): refuse out-of-order bits.
        let needs = |bit: u32, prereq: u32| new_bits & bit == 0 || value & prereq == prereq;
        if !needs(VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE)
            || !needs(
                VIRTIO_CONFIG_S_FEATURES_OK,
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
            )
            || !needs(VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK)
        {
            log::debug!("virtio-mmio: out-of-order status {value:#x}; ignored");
            return;
        }
        let mut accepted = value;
        if new_bits & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear is how the device says no (§3.1.1 step 6).
            log::warn!(
                "virtio-mmio: driver features {:#x} not acceptable (offered {:#x})",
                self.driver_features,
                self.device_features
            );
            accepted &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        } else if new_bits & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            lock(&self.device).ack_features(self.driver_features);
        }
        self.status = accepted;
        if new_bits & VIRTIO_CONFIG_S_DRIVER_OK != 0 && accepted & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Only offered features, and VERSION_1: this transport is modern-only.
    fn features_acceptable(&self) -> bool {
        !self.unknown_features_acked
            && self.driver_features & !self.device_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(queue) => queues.push(VirtioQueue {
                    queue,
                    notify: evt.clone(),
                }),
                Err(e) => {
                    log::warn!("virtio-mmio: cannot activate queue: {e}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let result = lock(&self.device).activate(self.mem.clone(), self.interrupt.clone(), queues);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::warn!("virtio-mmio: device activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.unknown_features_acked = false;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.reset();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of unknown/write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let driver_features_allowed = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_FAILED) == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES if driver_features_allowed => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value as u64,
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | ((value as u64) << 32)
                }
                // Words beyond 64 bits: no feature exists there, so a non-zero one is an
                // unknown feature and FEATURES_OK will be refused.
                _ => self.unknown_features_acked |= value != 0,
            },
            reg::DRIVER_FEATURES => log::debug!("virtio-mmio: feature write refused"),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.with_config_queue(|q| {
                if q.try_set_size(value.try_into().unwrap_or(0)).is_err() {
                    log::debug!("virtio-mmio: invalid queue size {value} ignored");
                }
            }),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_DESC_LOW => {
                self.with_config_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.with_config_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_AVAIL_LOW => {
                self.with_config_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_AVAIL_HIGH => {
                self.with_config_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_USED_LOW => {
                self.with_config_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_USED_HIGH => {
                self.with_config_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd before it reaches us; forward it otherwise.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    if let Err(e) = evt.write(1) {
                        log::warn!("virtio-mmio: queue notify failed: {e}");
                    }
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            _ => log::debug!("virtio-mmio: write to unknown/read-only register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32-bit, naturally aligned (§4.2.2.2); other accesses read as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            log::debug!("virtio-mmio: bad register read {offset:#x}/{}", data.len());
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!("virtio-mmio: bad register write {offset:#x}/{}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

/// Locks the device, recovering from poisoning (see `bus::lock` for why).
fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
