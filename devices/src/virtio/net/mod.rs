//! virtio-net (virtio 1.2 §5.1) over a tap, macvtap or inherited-fd [`NetBackend`].
//!
//! * [`config`]: feature bits and config space.
//! * `rx`: backend → guest (one host copy per frame, MRG_RXBUF assembly, back-pressure).
//! * `tx`: guest → backend (writev straight from guest memory, never blocks).
//! * `ctrl`: the control queue (MQ pairs, announce ack).
//! * `event`: the event-loop subscriber (activation, queue kicks, backend readiness).
//! * `persist`: save/restore.
//!
//! Queues are `rx0, tx0, rx1, tx1, …, ctrl`: `2 × pairs + 1` of them, pair `i` served by
//! backend fd `i`. Everything runs on the device thread except the [`VirtioDevice`] calls and
//! [`Net::announce`], which come with the device lock held from vCPU or controller threads.

pub mod config;
mod ctrl;
mod event;
mod persist;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

pub use persist::NetState;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ, VIRTIO_NET_S_ANNOUNCE,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::net::vnet::{tun_offload_flags, VNET_HDR_LEN};
use crate::net::{MacAddr, NetBackend};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::GuestMemory;
use config::has;

/// Largest frame the device moves: a 64 KiB GSO packet plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Most descriptors accepted in one chain (a Linux guest uses at most MAX_SKB_FRAGS + 2).
const MAX_CHAIN_DESCS: usize = 64;
/// Ethernet header: anything shorter is not a frame.
const ETH_HLEN: usize = 14;

/// Frame counters, readable from any thread (metrics).
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the backend not given to the guest (too big for its buffers, bad header).
    pub rx_dropped: AtomicU64,
    /// Frames from the guest not sent (malformed, refused by the backend).
    pub tx_dropped: AtomicU64,
    /// Descriptor chains rejected as malformed (any queue).
    pub bad_chains: AtomicU64,
    /// Times the RX rate limiter put receiving to sleep until its timer.
    pub rx_throttled: AtomicU64,
    /// Times the TX rate limiter put sending to sleep until its timer.
    pub tx_throttled: AtomicU64,
}

impl NetMetrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One descriptor's worth of guest memory, validated.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: GuestAddress,
    len: u32,
}

/// `iovec`s into guest memory, reused for every TX frame.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the vector is scratch space, cleared and refilled before every use on whichever
// thread holds the device lock; the pointers it held never outlive that use.
unsafe impl Send for IoVecs {}

/// Per queue pair state kept across activations.
struct Pair {
    /// One frame read from the backend: vnet header then Ethernet frame.
    rx_buf: Box<[u8]>,
    /// Length of a frame waiting in `rx_buf` for guest buffers (0: none).
    rx_len: usize,
    /// Whether the frame in `rx_buf` already took its RX rate-limiter tokens.
    rx_admitted: bool,
    /// The guest had no buffers: the backend is not read until the next RX kick.
    rx_stalled: bool,
    /// The backend answered EAGAIN: TX waits for it to become writable.
    tx_blocked: bool,
    /// What the event loop watches on the backend fd; `None` until added.
    interest: Option<EventSet>,
}

impl Pair {
    fn new() -> Self {
        Self {
            rx_buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            rx_len: 0,
            rx_admitted: false,
            rx_stalled: false,
            tx_blocked: false,
            interest: None,
        }
    }
}

/// State that exists only between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    /// Every queue in index order (`rx0, tx0, …, ctrl`); the driver may leave some off.
    queues: Vec<Queue>,
    /// Queue pairs the driver can use (all with MQ, else one).
    usable_pairs: u16,
    /// Index of the control queue, when the driver negotiated and enabled it.
    ctrl: Option<usize>,
    /// Queue pairs in use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    curr_pairs: u16,
    /// The driver broke the protocol (DEVICE_NEEDS_RESET): nothing is processed.
    broken: bool,
}

impl Active {
    /// Whether queue `index` exists, is enabled and belongs to a pair in use.
    fn serves(&self, index: usize) -> bool {
        !self.broken
            && index / 2 < usize::from(self.curr_pairs)
            && self.queues.get(index).is_some_and(|q| q.ready())
    }
}

/// A virtio-net device.
pub struct Net {
    backend: NetBackend,
    mac: MacAddr,
    max_pairs: u16,
    avail_features: u64,
    /// The MTU told to the guest (VIRTIO_NET_F_MTU), when configured.
    mtu: Option<u16>,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    /// Config `status` (LINK_UP, ANNOUNCE); atomic because `announce` takes `&self`.
    status: AtomicU16,

    activate_evt: EventFd,
    /// Queue kick eventfds from the transport (fixed for the device's life).
    queue_evts: Vec<Arc<EventFd>>,
    registered_queue_fds: Vec<RawFd>,
    /// Kept across resets so announce can still raise a config interrupt.
    interrupt: Option<Arc<VirtioInterrupt>>,
    active: Option<Active>,
    pairs: Vec<Pair>,
    /// Pairs in use saved by a snapshot, applied at the re-activation that follows restore.
    restored_pairs: Option<u16>,

    segs: Vec<Seg>,
    /// Chains taken for one RX frame: head and end index in `segs`.
    rx_chains: Vec<(u16, usize)>,
    iovs: IoVecs,
    metrics: Arc<NetMetrics>,
    /// Limits frames and bytes given to the guest (all pairs together); unlimited by default.
    rx_limiter: RateLimiter,
    /// Limits frames and bytes the guest sends (all pairs together); unlimited by default.
    tx_limiter: RateLimiter,
}

impl Net {
    /// Creates a device over `backend`; the guest MAC is the one the backend decided
    /// ([`NetBackend::guest_mac`]), one queue pair per backend fd.
    pub fn new(backend: NetBackend) -> io::Result<Self> {
        let max_pairs = backend.queue_pairs().max(1);
        let nqueues = 2 * usize::from(max_pairs) + 1;
        Ok(Self {
            mac: backend.guest_mac(),
            max_pairs,
            avail_features: config::features(max_pairs, None),
            mtu: None,
            acked_features: 0,
            queue_sizes: vec![config::QUEUE_SIZE; nqueues],
            status: AtomicU16::new(VIRTIO_NET_S_LINK_UP as u16),
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            queue_evts: Vec::new(),
            registered_queue_fds: Vec::new(),
            interrupt: None,
            active: None,
            pairs: (0..max_pairs).map(|_| Pair::new()).collect(),
            restored_pairs: None,
            segs: Vec::with_capacity(usize::from(config::QUEUE_SIZE)),
            rx_chains: Vec::with_capacity(usize::from(config::QUEUE_SIZE)),
            iovs: IoVecs(Vec::with_capacity(MAX_CHAIN_DESCS)),
            metrics: Arc::new(NetMetrics::default()),
            rx_limiter: RateLimiter::unlimited()?,
            tx_limiter: RateLimiter::unlimited()?,
            backend,
        })
    }

    /// `Net::new` wrapped for the VMM: the same `Arc` is the transport's device
    /// (`Arc<Mutex<dyn VirtioDevice>>`) and the event-loop subscriber
    /// (`Arc<Mutex<dyn MutEventSubscriber + Send>>`); both coerce from it.
    pub fn new_shared(backend: NetBackend) -> io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new(backend)?)))
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Tells the guest an MTU (VIRTIO_NET_F_MTU and the config field): a driver that accepts
    /// the feature uses it for the interface. Call before the device is attached; the features
    /// offered cannot change under a driver.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = Some(mtu);
        self.avail_features = config::features(self.max_pairs, self.mtu);
    }

    /// Applies rate limiter configurations (at creation or on a running device; see
    /// [`crate::rate_limiter`]); `None` leaves that direction as it is. Frames held back are
    /// retried under the new limits at once.
    pub fn set_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        if let Some(rx) = rx {
            self.rx_limiter.set_config(rx);
        }
        if let Some(tx) = tx {
            self.tx_limiter.set_config(tx);
        }
    }

    /// The RX and TX rate limiters' configurations.
    pub fn rate_limiter_configs(&self) -> (RateLimiterConfig, RateLimiterConfig) {
        (self.rx_limiter.config(), self.tx_limiter.config())
    }

    /// The guest's MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn backend(&self) -> &NetBackend {
        &self.backend
    }

    /// Tells the network the guest moved (call on the destination after a migration):
    /// (a) when the driver negotiated VIRTIO_NET_F_GUEST_ANNOUNCE, sets VIRTIO_NET_S_ANNOUNCE
    /// and raises the config interrupt, so the guest sends its own gratuitous ARPs/NAs (it acks
    /// on the control queue, which clears the bit); (b) ferry itself writes a RARP broadcast
    /// from the guest MAC on the backend, so switches learn the new port even if the guest
    /// cannot announce. Returns the backend write error, if any (the guest part never fails).
    pub fn announce(&self) -> io::Result<()> {
        if self.active.is_some() && has(self.acked_features, VIRTIO_NET_F_GUEST_ANNOUNCE) {
            self.status
                .fetch_or(VIRTIO_NET_S_ANNOUNCE as u16, Ordering::SeqCst);
            if let Some(interrupt) = &self.interrupt {
                interrupt.signal_config_change();
            }
        }
        self.send_rarp()
    }

    /// Writes one RARP request (ethertype 0x8035, as QEMU and switches expect for a moved
    /// guest) from the guest MAC to the broadcast address.
    fn send_rarp(&self) -> io::Result<()> {
        let frame = rarp_frame(self.mac);
        let fd = self
            .backend
            .fd(0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "backend has no queue"))?;
        // SAFETY: writes `frame.len()` bytes from a live buffer to the backend fd.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn config_bytes(&self) -> [u8; config::CONFIG_LEN] {
        config::build(
            self.mac,
            self.status.load(Ordering::SeqCst),
            self.max_pairs,
            self.mtu,
        )
    }

    /// Queue pairs the driver can use: all with MQ, else one.
    fn usable_pairs(&self) -> u16 {
        if has(self.acked_features, VIRTIO_NET_F_MQ) {
            self.max_pairs
        } else {
            1
        }
    }

    /// Index of the control queue: after every pair with MQ, else 2 (virtio 1.2 §5.1.2).
    fn ctrl_index(&self) -> usize {
        2 * usize::from(self.usable_pairs())
    }

    /// Attaches the backend queues of the pairs in use and detaches the others.
    fn apply_pairs(&self, curr: u16) {
        for p in 0..self.max_pairs {
            if let Err(e) = self.backend.set_queue_enabled(usize::from(p), p < curr) {
                log::warn!("virtio-net: cannot (de)attach backend queue {p}: {e}");
            }
        }
    }

    fn break_device(a: &mut Active, why: &str) {
        if !a.broken {
            log::warn!("virtio-net: {why}; device needs reset");
            a.broken = true;
            a.interrupt.set_needs_reset();
        }
    }
}

/// Takes one frame of `bytes` from `limiter`. Each time this puts the direction to sleep on the
/// limiter's timer (a refusal, or a frame larger than the bucket that left a debt) counts in
/// `throttled`. Only called for a configured limiter (callers check `is_unlimited` inline).
#[inline(never)]
fn admit_frame(limiter: &mut RateLimiter, bytes: usize, throttled: &AtomicU64) -> bool {
    let was_blocked = limiter.is_blocked();
    let admitted = limiter.consume_op(bytes as u64);
    if !was_blocked && limiter.is_blocked() {
        NetMetrics::add(throttled, 1);
    }
    admitted
}

/// Interrupts the guest for `q` unless EVENT_IDX says it does not want one yet.
fn notify_guest(q: &mut Queue, mem: &GuestMemory, interrupt: &VirtioInterrupt) {
    // On error (used_event unreadable) interrupt anyway: a spurious interrupt is harmless.
    if q.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

/// A driver that publishes an avail index more than a ring ahead of the device breaks the
/// ring (virtio-queue then pops nothing); detecting it keeps "buffers are available, but none
/// can be popped" from spinning the device thread.
fn avail_overrun(q: &Queue, mem: &GuestMemory) -> bool {
    match q.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(q.next_avail()) > q.size(),
        Err(_) => true,
    }
}

/// vnet header (all zero: no offloads) + a 60-byte RARP request from `mac`.
pub fn rarp_frame(mac: MacAddr) -> [u8; VNET_HDR_LEN + 60] {
    let mut f = [0u8; VNET_HDR_LEN + 60];
    let e = &mut f[VNET_HDR_LEN..];
    e[0..6].copy_from_slice(&[0xff; 6]);
    e[6..12].copy_from_slice(&mac.0);
    e[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    e[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    e[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    e[18] = 6;
    e[19] = 4;
    e[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    e[22..28].copy_from_slice(&mac.0); // sender hardware address
    e[32..38].copy_from_slice(&mac.0); // target hardware address
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
        // Mirror the guest's receive offloads on the backend, so it only hands us frames the
        // guest can take.
        if let Err(e) = self
            .backend
            .set_offload(tun_offload_flags(self.acked_features))
        {
            log::warn!("virtio-net: TUNSETOFFLOAD failed: {e}");
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config::read(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only in legacy mode; nothing else is writable.
        log::debug!(
            "virtio-net: config write at {offset:#x} ({} bytes) ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtioQueue>,
    ) -> Result<(), ActivateError> {
        let expected = self.queue_sizes.len();
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        let usable = self.usable_pairs();
        let ctrl_index = self.ctrl_index();
        let mut list = Vec::with_capacity(expected);
        let mut evts = Vec::with_capacity(expected);
        for (i, VirtioQueue { queue, notify }) in queues.into_iter().enumerate() {
            if queue.ready() && !queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(i));
            }
            evts.push(notify);
            list.push(queue);
        }
        // The first pair is mandatory; the rest may stay off.
        if let Some(i) = list.iter().take(2).position(|q| !q.ready()) {
            return Err(ActivateError::BadQueue(i));
        }
        let ctrl = (has(self.acked_features, VIRTIO_NET_F_CTRL_VQ) && list[ctrl_index].ready())
            .then_some(ctrl_index);
        if self.active.is_some() {
            self.reset_queues();
        }
        let curr_pairs = self
            .restored_pairs
            .take()
            .filter(|&n| n >= 1 && n <= usable)
            .unwrap_or(1);
        self.apply_pairs(curr_pairs);
        self.queue_evts = evts;
        self.interrupt = Some(interrupt.clone());
        self.active = Some(Active {
            mem,
            interrupt,
            queues: list,
            usable_pairs: usable,
            ctrl,
            curr_pairs,
            broken: false,
        });
        // The event thread registers the fds and looks at the queues (see virtio module docs).
        self.activate_evt.write(1)?;
        Ok(())
    }

    fn reset(&mut self) {
        self.reset_queues();
        self.acked_features = 0;
        if let Err(e) = self.backend.set_offload(0) {
            log::warn!("virtio-net: TUNSETOFFLOAD failed: {e}");
        }
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
            .unwrap_or_default()
    }
}

impl Net {
    /// Forgets the active queues and any frame waiting for guest buffers.
    fn reset_queues(&mut self) {
        self.active = None;
        self.status
            .fetch_and(!(VIRTIO_NET_S_ANNOUNCE as u16), Ordering::SeqCst);
        for pair in &mut self.pairs {
            if pair.rx_len != 0 {
                NetMetrics::add(&self.metrics.rx_dropped, 1);
            }
            pair.rx_len = 0;
            pair.rx_admitted = false;
            pair.rx_stalled = false;
            pair.tx_blocked = false;
        }
    }
}
