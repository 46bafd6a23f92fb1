//! virtio-blk (virtio 1.2 §5.2) over any [`DiskBackend`].
//!
//! * [`config`]: feature bits and config space.
//! * [`request`]: parsing and validating one request chain.
//! * `queue`: popping requests, batching them to the backend, completing them.
//! * `event`: the event-loop subscriber (activation, queue kicks, backend completions).
//! * `swap`: replacing the backend of a live device (a new `path_on_host`).
//! * `persist`: save/restore.
//!
//! One queue of [`config::QUEUE_SIZE`] entries. Requests are parsed into fixed *slots* (one per
//! backend request slot), so nothing is allocated per request; the slot index is the backend tag.

pub mod config;
mod event;
mod persist;
mod queue;
pub mod request;
mod swap;
#[cfg(test)]
mod tests;

pub use persist::BlockState;
pub use swap::SwapError;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::avail::AvailReader;
use super::fastmem::FastMem;
use super::used::{UsedState, UsedWriter};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::storage::{Completion, DiskBackend, DiskInfo};
use crate::GuestMemory;
use request::{Desc, Request};

/// Length of the serial returned by GET_ID.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Request counters, readable from any thread (metrics).
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests completed, successfully or not.
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Requests completed with IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Times the rate limiter put the queue to sleep until its timer.
    pub throttled: AtomicU64,
}

impl BlockMetrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// State that exists only between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    q: ActiveQueue,
}

/// The live queue and what completing into it needs (kept apart from `mem` so a pass can hold
/// a borrow of guest memory while updating the queue).
struct ActiveQueue {
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    /// Set when the driver broke the protocol (DEVICE_NEEDS_RESET); nothing is processed.
    broken: bool,
    used_state: UsedState,
}

/// A virtio-blk device.
pub struct Block {
    id: [u8; ID_LEN],
    backend: Box<dyn DiskBackend>,
    info: DiskInfo,
    /// Capacity shown to the guest, in bytes.
    capacity: u64,
    config: [u8; config::CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],

    activate_evt: EventFd,
    /// The queue kick eventfd from the transport, kept across resets (it never changes).
    queue_evt: Option<Arc<EventFd>>,
    /// Kept across resets so a resize after reset still bumps the config generation.
    interrupt: Option<Arc<VirtioInterrupt>>,
    active: Option<Active>,
    /// fds already added to the event loop (the loop keeps them for the device's life).
    registered_queue_fd: Option<RawFd>,
    registered_backend_fd: Option<RawFd>,
    /// Backends replaced by [`Block::swap_backend`] whose notifier the device thread has yet to
    /// unregister (it must happen before they close; see `swap`).
    retired: Vec<Box<dyn DiskBackend>>,

    slots: Vec<Request>,
    free_slots: Vec<u16>,
    /// Whether each slot holds a request (popped and not yet completed).
    slot_busy: Vec<bool>,
    /// A parsed request not yet submitted (the rate limiter or the backend (Busy) held it back):
    /// retried before popping anything else.
    pending: Option<u16>,
    /// Whether `pending` already took its rate-limiter tokens (it waits for the backend only).
    pending_admitted: bool,
    /// Limits requests (ops) and bytes; unlimited unless configured.
    limiter: RateLimiter,
    descs: Vec<Desc>,
    completions: Vec<Completion>,
    metrics: Arc<BlockMetrics>,
}

impl Block {
    /// Creates a block device over `backend`. `id` is the serial the guest reads with GET_ID
    /// (truncated to 20 bytes; usually the drive id from the VM config).
    pub fn new(id: &str, backend: Box<dyn DiskBackend>) -> io::Result<Self> {
        let info = backend.info();
        let depth = backend
            .queue_depth()
            .clamp(1, usize::from(config::QUEUE_SIZE));
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            id: serial,
            info,
            capacity: info.size_bytes,
            config: config::build(&info, info.size_bytes),
            avail_features: config::features_for(&info),
            acked_features: 0,
            queue_sizes: [config::QUEUE_SIZE],
            backend,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            queue_evt: None,
            interrupt: None,
            active: None,
            registered_queue_fd: None,
            registered_backend_fd: None,
            retired: Vec::new(),
            slots: (0..depth).map(|_| Request::new()).collect(),
            free_slots: (0..depth as u16).rev().collect(),
            slot_busy: vec![false; depth],
            pending: None,
            pending_admitted: false,
            limiter: RateLimiter::unlimited()?,
            descs: Vec::with_capacity(16),
            completions: Vec::with_capacity(depth),
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    /// `Block::new` wrapped for the VMM: the same `Arc` is the transport's device
    /// (`Arc<Mutex<dyn VirtioDevice>>`) and the event-loop subscriber
    /// (`Arc<Mutex<dyn MutEventSubscriber + Send>>`); both coerce from it.
    pub fn new_shared(id: &str, backend: Box<dyn DiskBackend>) -> io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new(id, backend)?)))
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Applies a rate limiter configuration (at creation or on a running device; see
    /// [`crate::rate_limiter`]). Held-back requests are retried under the new limits at once.
    pub fn set_rate_limiter(&mut self, config: &RateLimiterConfig) {
        self.limiter.set_config(config);
    }

    /// The rate limiter's configuration (buckets of size 0 are absent).
    pub fn rate_limiter_config(&self) -> RateLimiterConfig {
        self.limiter.config()
    }

    /// Capacity shown to the guest, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Re-reads the backend's size (the disk was resized on the host), updates config space and
    /// raises the config-change interrupt (bumping the config generation). Returns the new
    /// capacity in bytes. Before the driver first set DRIVER_OK there is no interrupt to raise;
    /// the driver reads the new capacity when it probes.
    pub fn refresh_capacity(&mut self) -> io::Result<u64> {
        let info = self.backend.refresh()?;
        self.info = info;
        if info.size_bytes != self.capacity {
            self.capacity = info.size_bytes;
            config::set_capacity(&mut self.config, self.capacity);
            if let Some(interrupt) = &self.interrupt {
                interrupt.signal_config_change();
            }
        }
        Ok(self.capacity)
    }

    /// Waits until every request handed to the backend has completed and been reported to the
    /// guest, without taking new ones, then makes completed writes durable on the backend
    /// (fdatasync, SYNCHRONIZE CACHE), so another host opening shared storage sees them. Call
    /// with vCPUs paused (and the device thread parked) before saving state.
    pub fn quiesce(&mut self) -> io::Result<()> {
        self.drain(true);
        if self.info.read_only {
            return Ok(());
        }
        self.flush_backend()
    }

    /// A synchronous backend flush; only valid with nothing in flight (after `drain`), so the one
    /// completion that arrives is the flush's.
    fn flush_backend(&mut self) -> io::Result<()> {
        const FLUSH_TAG: u64 = u64::MAX;
        let req = crate::storage::DiskRequest {
            tag: FLUSH_TAG,
            op: crate::storage::DiskOp::Flush,
            offset: 0,
            len: 0,
            bufs: &[],
        };
        self.backend
            .submit(&req)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.backend.kick()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            self.completions.clear();
            self.backend.poll_completions(&mut self.completions);
            if let Some(c) = self.completions.iter().find(|c| c.tag == FLUSH_TAG) {
                return match c.result {
                    Ok(_) | Err(crate::storage::DiskError::Unsupported) => Ok(()),
                    Err(crate::storage::DiskError::Io) => {
                        Err(io::Error::other("the disk backend failed to flush"))
                    }
                };
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other(
                    "the disk backend did not finish a flush in 30 s",
                ));
            }
            queue::wait_readable(self.backend.notifier(), 10);
        }
    }

    fn limits(&self) -> request::Limits {
        request::Limits::new(&self.info, self.capacity)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config::read(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is not offered.
        log::debug!(
            "virtio-blk: config write at {offset:#x} ({} bytes) ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtioQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Some(VirtioQueue { queue, notify }) = queues.into_iter().next().filter(|_| got == 1)
        else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        // The rings must also lie in one memory region each: they are mapped once per pass.
        if !queue.ready()
            || !queue.is_valid(&mem)
            || UsedWriter::new(&FastMem::new(&mem), &queue).is_err()
            || AvailReader::new(&FastMem::new(&mem), &queue).is_err()
        {
            return Err(ActivateError::BadQueue(0));
        }
        if self.active.is_some() {
            // Re-activation without a reset (a restore over a live device): finish what is in
            // flight first. The features just acked stay.
            self.drain(false);
            self.active = None;
        }
        self.queue_evt = Some(notify);
        self.interrupt = Some(interrupt.clone());
        self.active = Some(Active {
            mem,
            q: ActiveQueue {
                queue,
                interrupt,
                broken: false,
                used_state: UsedState::default(),
            },
        });
        // The event thread registers the fds and looks at the queue (see virtio module docs).
        self.activate_evt.write(1)?;
        Ok(())
    }

    fn reset(&mut self) {
        self.drain(false);
        self.active = None;
        self.acked_features = 0;
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| vec![a.q.queue.state()])
            .unwrap_or_default()
    }
}
