//! virtio devices on the MMIO transport (virtio 1.2, modern interface only).
//!
//! # Pieces
//! * [`VirtioDevice`]: what a device model (block, net) implements; the transport drives it.
//! * [`mmio::MmioTransport`]: the register file a guest driver programs (a [`crate::bus::BusDevice`]).
//! * [`VirtioInterrupt`]: interrupt status bits, config generation and the irqfd, shared by the
//!   transport (which reads/acks them for the guest) and the device (which raises them).
//! * [`block`]: the virtio-blk device; [`net`]: virtio-net; [`rng`]: virtio-rng (entropy);
//!   [`vsock`]: virtio-vsock with Firecracker's host side (Unix sockets);
//!   [`balloon`]: virtio-balloon.
//! * Hot-path ring access shared by devices: [`fastmem`] (guest memory mapped once per pass),
//!   [`avail`], [`desc`] and [`used`] (the three split-ring parts); `virtio_queue::Queue` keeps
//!   the ring positions and the notification-suppression writes.
//! * `testing`: a driver-side ring helper for tests and benchmarks.
//!
//! # Threads, eventfds and activation
//! Two threads touch a device. vCPU threads reach the transport through the MMIO bus (register
//! reads and writes, rare). One device thread runs an
//! `event_manager::EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>` and does all queue
//! processing, so the hot path never takes a vCPU exit:
//!
//! 1. The VMM builds the device and its transport, then:
//!    * registers each [`mmio::MmioTransport::queue_notify_evts`] fd as an ioeventfd at
//!      `base + 0x50` with `datamatch = queue index` (4-byte writes), so queue kicks are eventfd
//!      writes inside KVM;
//!    * registers [`mmio::MmioTransport::interrupt_evt`] as an irqfd on the device's GSI;
//!    * adds the device (its `Arc<Mutex<..>>`, which also implements
//!      `event_manager::MutEventSubscriber`) to the event manager with `add_subscriber`.
//! 2. At `add_subscriber` the device's `init` watches only its private *activate* eventfd.
//! 3. When the driver sets DRIVER_OK, the transport calls [`VirtioDevice::activate`] (vCPU
//!    thread, device lock held): the device takes the queues and guest memory and writes its
//!    activate eventfd.
//! 4. On the device thread, the activate event registers the queue notify fds and the backend's
//!    completion fd with `ops.add(..)` (once for the device's life: the fds never change, and a
//!    reset device simply drains and ignores notifications), then processes the queues in case the
//!    driver (or a restored snapshot) already queued requests.
//!
//! Restoring a snapshot follows the same path: the transport's `restore_state` re-activates the
//! device without guest help when the saved status has DRIVER_OK.
//!
//! # Wiring a disk (what the VMM does)
//! ```text
//! let disk = storage::open::open_disk(&drive.path, drive.read_only, drive.direct)?;
//! let block = block::Block::new_shared(&drive.id, disk)?;          // Arc<Mutex<Block>>
//! let transport = mmio::MmioTransport::new(mem.clone(), block.clone())?;
//! for (queue, evt) in transport.queue_notify_evts() {
//!     vm.register_ioevent(evt, &IoEventAddress::Mmio(base + mmio::NOTIFY_REG_OFFSET), queue)?;
//! }
//! vm.register_irqfd(transport.interrupt_evt(), gsi)?;
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, mmio::MMIO_LEN)?;
//! event_manager.add_subscriber(block.clone());                     // device thread
//! // kernel command line: virtio_mmio.device=4K@<base>:<gsi>
//! // resize: block.lock().unwrap().refresh_capacity()?;
//! // save:   pause vCPUs; block.lock().unwrap().quiesce(); save Block, then MmioTransport.
//! // restore: Block::restore_state, then MmioTransport::restore_state (re-activates).
//! ```
//!
//! # Config changes
//! A device whose config space changes (a resized disk) calls
//! [`VirtioInterrupt::signal_config_change`], which bumps the config generation the driver reads
//! at `0xfc` and raises the configuration-change interrupt. A device that hits an unrecoverable
//! driver error calls [`VirtioInterrupt::set_needs_reset`] (status bit DEVICE_NEEDS_RESET).

pub mod avail;
pub mod balloon;
pub mod block;
pub mod desc;
pub mod fastmem;
pub mod mmio;
pub mod net;
pub mod rng;
#[doc(hidden)]
pub mod testing;
pub mod used;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::GuestMemory;

/// One virtqueue handed to a device at activation, with the eventfd the guest kicks.
#[derive(Debug)]
pub struct VirtioQueue {
    pub queue: Queue,
    /// Written (through ioeventfd, or by the transport as a fallback) when the driver notifies.
    pub notify: Arc<EventFd>,
}

/// Why a device refused to start. The transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or not valid")]
    BadQueue(usize),
    #[error("wrong number of queues: expected {expected}, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("activation I/O: {0}")]
    Io(#[from] io::Error),
}

/// A virtio device model, driven by a transport.
///
/// All methods run on a vCPU thread with the device lock held, except that the device's own
/// event-loop processing (see the module docs) runs on the device thread with the same lock.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 1 = net).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (VIRTIO_F_VERSION_1 is added by the transport).
    fn avail_features(&self) -> u64;

    /// The features the driver accepted (a subset of `avail_features`, checked by the transport).
    fn ack_features(&mut self, features: u64);

    /// Reads device config space at `offset`; bytes past the end of config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space; writes to read-only or out-of-range fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with its queues (in index order). Must not block; the device finishes
    /// starting on its event thread (see module docs).
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtioQueue>,
    ) -> Result<(), ActivateError>;

    /// Stops using the queues and guest memory (driver wrote 0 to Status). In-flight backend I/O
    /// is drained first, so no buffer is touched after the driver regains it.
    fn reset(&mut self);

    /// The live state of each queue while active (positions move as the device works), empty
    /// when not active. Used by the transport's save.
    fn queue_states(&self) -> Vec<QueueState>;
}

/// Interrupt status, config generation and the irqfd shared by a transport and its device.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
    irq_evt: EventFd,
}

impl VirtioInterrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register as an irqfd on the device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that config space changed; the generation changes first so a driver
    /// reading config across the change sees it and retries.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Marks the device as needing a reset (status bit DEVICE_NEEDS_RESET) and tells the driver.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Clears interrupt status and the needs-reset flag (device reset). The config generation
    /// keeps counting so a driver never sees an old value again.
    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Restores saved values (snapshot/migration).
    fn restore(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter (never in practice: KVM drains it) or a closed irqfd only
        // loses an interrupt the guest will find by polling; never worth failing the caller.
        if let Err(e) = self.irq_evt.write(1) {
            log::warn!("virtio: failed to signal interrupt: {e}");
        }
    }
}
