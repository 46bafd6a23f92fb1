//! virtio-balloon (virtio 1.2 §5.5): the host asks the guest for memory back, the guest hands
//! over pages it no longer uses, and ferry returns them to the host.
//!
//! * [`config`]: feature bits, queue indices, config space layout, limits.
//! * [`ranges`]: page frame numbers → validated, coalesced ranges → `madvise`.
//! * [`stats`]: the guest's memory statistics.
//! * `queue`: the inflate, deflate, statistics and free page reporting queues.
//! * `event`: the event-loop subscriber (activation, queue kicks, the statistics timer).
//! * `persist`: save/restore.
//!
//! The host sets a target (`num_pages` in config space, [`Balloon::set_target_pages`], raising
//! the config-change interrupt); the driver inflates (gives pfns on the inflate queue) or
//! deflates (takes them back on the deflate queue) towards it and writes how many pages it
//! holds into `actual`. Inflated pages are released with `madvise`; deflated ones need nothing:
//! the next guest touch faults a fresh zero page in. With statistics enabled the driver keeps
//! one buffer in the statistics queue; the device holds it and gives it back every polling
//! interval, and the driver refills it with fresh numbers. Free page reporting (when enabled)
//! lets the guest hand over free page blocks, which are released the same way and stay the
//! guest's.

pub mod config;
mod event;
mod persist;
mod queue;
pub mod ranges;
pub mod stats;
#[cfg(test)]
mod tests;

pub use persist::BalloonState;
pub use stats::GuestStats;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::avail::AvailReader;
use super::fastmem::FastMem;
use super::used::{UsedState, UsedWriter};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::GuestMemory;

/// Counters, readable from any thread. Names follow Firecracker's balloon metrics where it has
/// one.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Activations refused (queues missing or outside guest memory).
    pub activate_fails: AtomicU64,
    /// Inflate requests served.
    pub inflate_count: AtomicU64,
    /// Deflate requests served.
    pub deflate_count: AtomicU64,
    /// Statistics buffers received from the guest.
    pub stats_updates_count: AtomicU64,
    /// Statistics buffers that could not be read, or polls with no buffer to give back.
    pub stats_update_fails: AtomicU64,
    /// Free page reports served, bytes they released, and ranges refused or not released.
    pub free_page_report_count: AtomicU64,
    pub free_page_report_freed: AtomicU64,
    pub free_page_report_fails: AtomicU64,
    /// ferry's: bytes of inflated pages given back to the host.
    pub released_bytes: AtomicU64,
    /// ferry's: inflated pfns outside guest memory (skipped), and trailing bytes of a pfn
    /// buffer that hold no whole pfn.
    pub bad_pfns: AtomicU64,
    /// ferry's: `madvise` failures (the pages stay resident; the guest is not told).
    pub release_fails: AtomicU64,
}

impl BalloonMetrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a balloon is created (`PUT /balloon`, `--balloon`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonSettings {
    /// Initial target in 4 KiB pages.
    pub target_pages: u32,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Statistics polling interval; 0: no statistics queue at all.
    pub stats_interval_s: u16,
    /// Offer VIRTIO_BALLOON_F_REPORTING (a free page reporting queue).
    pub free_page_reporting: bool,
}

/// Why a request on a running balloon was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("statistics cannot be enabled or disabled after boot (the statistics queue is fixed when the guest starts)")]
    StatisticsStateChange,
    #[error("balloon statistics are not enabled")]
    StatisticsDisabled,
}

/// One queue between DRIVER_OK and reset.
struct ActiveQueue {
    queue: Queue,
    /// Set when the driver broke the ring protocol (DEVICE_NEEDS_RESET); nothing is processed.
    broken: bool,
    used_state: UsedState,
}

/// State that exists only between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    /// By queue index. A queue the driver did not set up (statistics or reporting when it did
    /// not accept the feature) is kept, not ready, so its saved state is the transport's.
    queues: Vec<ActiveQueue>,
}

/// A virtio-balloon device.
pub struct Balloon {
    avail_features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    stats_index: Option<usize>,
    reporting_index: Option<usize>,
    /// `num_pages`: what the host wants the balloon to hold.
    target_pages: u32,
    /// `actual`: what the driver says it holds.
    actual_pages: u32,
    stats_interval_s: u16,
    stats: GuestStats,
    /// The statistics buffer the device holds until the next poll.
    stats_head: Option<u16>,
    stats_timer: OwnedFd,
    activate_evt: EventFd,
    /// Queue kick eventfds from the transport (they never change for the device's life).
    queue_evts: Vec<Arc<EventFd>>,
    registered_fds: Vec<RawFd>,
    active: Option<Active>,
    /// Pfns of the current batch and its ranges; capacity allocated once.
    pfns: Vec<u32>,
    ranges: Vec<ranges::PageRange>,
    metrics: Arc<BalloonMetrics>,
}

impl Balloon {
    pub fn new(settings: BalloonSettings) -> io::Result<Self> {
        let stats = settings.stats_interval_s > 0;
        let mut queue_sizes = vec![config::QUEUE_SIZE; 2];
        let stats_index = stats.then(|| {
            queue_sizes.push(config::QUEUE_SIZE);
            queue_sizes.len() - 1
        });
        let reporting_index = settings.free_page_reporting.then(|| {
            queue_sizes.push(config::QUEUE_SIZE);
            queue_sizes.len() - 1
        });
        // SAFETY: plain syscall; the fd is checked and owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh timerfd nobody else owns.
        let stats_timer = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            avail_features: config::features(
                stats,
                settings.deflate_on_oom,
                settings.free_page_reporting,
            ),
            acked_features: 0,
            queue_sizes,
            stats_index,
            reporting_index,
            target_pages: settings.target_pages,
            actual_pages: 0,
            stats_interval_s: settings.stats_interval_s,
            stats: GuestStats::default(),
            stats_head: None,
            stats_timer,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            queue_evts: Vec::new(),
            registered_fds: Vec::new(),
            active: None,
            pfns: Vec::with_capacity(config::PFN_BATCH),
            ranges: Vec::with_capacity(config::PFN_BATCH),
            metrics: Arc::new(BalloonMetrics::default()),
        })
    }

    /// `Balloon::new` wrapped for the VMM: the same `Arc` is the transport's device and the
    /// event-loop subscriber.
    pub fn new_shared(settings: BalloonSettings) -> io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new(settings)?)))
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    /// The target, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// What the driver last said it holds, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    pub fn deflate_on_oom(&self) -> bool {
        self.avail_features & (1 << config::F_DEFLATE_ON_OOM) != 0
    }

    pub fn free_page_reporting(&self) -> bool {
        self.reporting_index.is_some()
    }

    pub fn stats_interval_s(&self) -> u16 {
        self.stats_interval_s
    }

    /// Sets the target and, when the driver is running, tells it (config-change interrupt).
    /// Before DRIVER_OK the driver reads the target when it starts. The caller checks the
    /// target against guest memory.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
        if let Some(a) = &self.active {
            a.interrupt.signal_config_change();
        }
    }

    /// The guest's latest statistics (empty until its first report).
    pub fn latest_stats(&self) -> Result<GuestStats, BalloonError> {
        if self.stats_index.is_none() {
            return Err(BalloonError::StatisticsDisabled);
        }
        Ok(self.stats)
    }

    /// Changes the polling interval of a device created with statistics, as Firecracker does:
    /// statistics cannot be turned on or off (the queue exists or not since the guest probed
    /// the device), and a new interval asks the guest for statistics at once.
    pub fn set_stats_interval(&mut self, interval_s: u16) -> Result<(), BalloonError> {
        if interval_s == self.stats_interval_s {
            return Ok(());
        }
        if interval_s == 0 || self.stats_interval_s == 0 {
            return Err(BalloonError::StatisticsStateChange);
        }
        self.stats_interval_s = interval_s;
        if self.active.is_some() {
            self.request_stats();
            self.arm_stats_timer();
        }
        Ok(())
    }

    /// Arms the statistics timer for the polling interval (or disarms it without statistics
    /// or a running driver). Called on the event thread and the controller's, never on a vCPU
    /// thread.
    fn arm_stats_timer(&self) {
        let secs = if self.active.is_some() && self.stats_index.is_some() {
            i64::from(self.stats_interval_s)
        } else {
            0
        };
        let period = libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `spec` is a valid itimerspec; the timerfd is ours.
        let rc = unsafe {
            libc::timerfd_settime(self.stats_timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc != 0 {
            log::warn!(
                "virtio-balloon: cannot arm the statistics timer: {}",
                io::Error::last_os_error()
            );
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
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
        let mut space = [0u8; config::CONFIG_SIZE as usize];
        space[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        space[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        data.fill(0);
        if let Some(src) = usize::try_from(offset).ok().and_then(|o| space.get(o..)) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    /// Only `actual` is driver-writable; a partial write updates the bytes it covers (Linux
    /// writes the whole le32 at once).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = config::CONFIG_ACTUAL;
        let end = start + 4;
        if offset < start || offset.saturating_add(data.len() as u64) > end {
            log::debug!(
                "virtio-balloon: config write at {offset:#x} ({} bytes) ignored",
                data.len()
            );
            return;
        }
        let mut actual = self.actual_pages.to_le_bytes();
        let at = (offset - start) as usize;
        actual[at..at + data.len()].copy_from_slice(data);
        self.actual_pages = u32::from_le_bytes(actual);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtioQueue>,
    ) -> Result<(), ActivateError> {
        let expected = self.queue_sizes.len();
        if queues.len() != expected {
            BalloonMetrics::add(&self.metrics.activate_fails, 1);
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        let mut active = Vec::with_capacity(expected);
        let mut evts = Vec::with_capacity(expected);
        for (i, VirtioQueue { queue, notify }) in queues.into_iter().enumerate() {
            evts.push(notify);
            if !queue.ready() {
                // Inflate and deflate are mandatory; the others follow the driver's features.
                if i <= config::DEFLATE {
                    BalloonMetrics::add(&self.metrics.activate_fails, 1);
                    return Err(ActivateError::BadQueue(i));
                }
                active.push(ActiveQueue {
                    queue,
                    broken: false,
                    used_state: UsedState::default(),
                });
                continue;
            }
            // The rings must lie in one memory region each: they are mapped once per pass.
            let fm = FastMem::new(&mem);
            if !queue.is_valid(&mem)
                || UsedWriter::new(&fm, &queue).is_err()
                || AvailReader::new(&fm, &queue).is_err()
            {
                BalloonMetrics::add(&self.metrics.activate_fails, 1);
                return Err(ActivateError::BadQueue(i));
            }
            active.push(ActiveQueue {
                queue,
                broken: false,
                used_state: UsedState::default(),
            });
        }
        self.queue_evts = evts;
        self.active = Some(Active {
            mem,
            interrupt,
            queues: active,
        });
        // The event thread arms the statistics timer (this runs on a vCPU thread, whose
        // seccomp list has no timer calls), registers the queue fds and looks at the queues.
        self.activate_evt.write(1)?;
        Ok(())
    }

    /// Nothing is ever in flight: dropping the queues is the whole reset. The held statistics
    /// buffer belongs to the old rings and is forgotten; the target stays (it is the host's).
    /// The statistics timer is disarmed by the event thread when it next fires (this runs on a
    /// vCPU thread).
    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.stats_head = None;
        self.actual_pages = 0;
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.queue.state()).collect())
            .unwrap_or_default()
    }
}
