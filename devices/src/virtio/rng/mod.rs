//! virtio-rng, the entropy device (virtio 1.2 §5.4), fed from the host's `getrandom(2)`.
//!
//! * [`config`]: feature bits and the per-request limits.
//! * `queue`: popping requests, filling their device-writable buffers, completing them.
//! * `event`: the event-loop subscriber (activation, queue kicks, the rate limiter's timer).
//! * `persist`: save/restore.
//!
//! One queue (`requestq`). Each request is a chain of buffers; the device fills the writable
//! ones that lie in guest memory with random bytes, straight from `getrandom` into the mapped
//! guest pages (no copy, no allocation per request), and reports how many bytes it wrote.
//! Read-only, empty or out-of-memory buffers are skipped, never written. An optional rate
//! limiter (Firecracker's token buckets: one op and the bytes per request) holds requests back
//! on its timerfd, never spinning.

pub mod config;
mod event;
mod persist;
mod queue;
#[cfg(test)]
mod tests;

pub use persist::RngState;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::avail::AvailReader;
use super::fastmem::FastMem;
use super::used::{UsedState, UsedWriter};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::GuestMemory;

/// Counters, readable from any thread (metrics).
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Requests completed (including those that got 0 bytes).
    pub requests: AtomicU64,
    /// Random bytes written into guest buffers.
    pub bytes: AtomicU64,
    /// Times the rate limiter put the queue to sleep until its timer.
    pub throttled: AtomicU64,
    /// `getrandom` failures (the request completed with what was written before).
    pub host_fails: AtomicU64,
    /// Buffers skipped because the driver got them wrong: read-only, or outside guest memory.
    pub bad_buffers: AtomicU64,
}

impl RngMetrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// State that exists only between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    q: ActiveQueue,
}

/// The live queue (kept apart from `mem` so a pass can borrow guest memory while updating it).
struct ActiveQueue {
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    /// Set when the driver broke the protocol (DEVICE_NEEDS_RESET); nothing is processed.
    broken: bool,
    used_state: UsedState,
}

/// One buffer of the current request that will be filled.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A virtio-rng device.
pub struct Rng {
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    activate_evt: EventFd,
    /// The queue kick eventfd from the transport, kept across resets (it never changes).
    queue_evt: Option<Arc<EventFd>>,
    registered_queue_fd: Option<RawFd>,
    active: Option<Active>,
    limiter: RateLimiter,
    /// The current request's buffers; capacity [`config::MAX_SEGMENTS`], allocated once.
    segments: Vec<Segment>,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            avail_features: config::features(),
            acked_features: 0,
            queue_sizes: [config::QUEUE_SIZE],
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            queue_evt: None,
            registered_queue_fd: None,
            active: None,
            limiter: RateLimiter::unlimited()?,
            segments: Vec::with_capacity(config::MAX_SEGMENTS),
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    /// `Rng::new` wrapped for the VMM: the same `Arc` is the transport's device and the
    /// event-loop subscriber.
    pub fn new_shared() -> io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new()?)))
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Applies a rate limiter configuration (at creation, or on a running device, where
    /// held-back requests are retried under the new limits at once).
    pub fn set_rate_limiter(&mut self, config: &RateLimiterConfig) {
        self.limiter.set_config(config);
    }

    /// The rate limiter's configuration (buckets of size 0 are absent).
    pub fn rate_limiter_config(&self) -> RateLimiterConfig {
        self.limiter.config()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
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

    /// virtio-rng has no config space: everything reads as zero.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng: config write at {offset:#x} ({} bytes) ignored: no config space",
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
        // The rings must lie in one memory region each: they are mapped once per pass.
        if !queue.ready()
            || !queue.is_valid(&mem)
            || UsedWriter::new(&FastMem::new(&mem), &queue).is_err()
            || AvailReader::new(&FastMem::new(&mem), &queue).is_err()
        {
            return Err(ActivateError::BadQueue(0));
        }
        self.queue_evt = Some(notify);
        self.active = Some(Active {
            mem,
            q: ActiveQueue {
                queue,
                interrupt,
                broken: false,
                used_state: UsedState::default(),
            },
        });
        // The event thread registers the queue fd and looks at the queue.
        self.activate_evt.write(1)?;
        Ok(())
    }

    /// Nothing is ever in flight: dropping the queue is the whole reset.
    fn reset(&mut self) {
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
