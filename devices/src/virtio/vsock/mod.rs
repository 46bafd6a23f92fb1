//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's host side: guest AF_VSOCK stream sockets
//! meet host AF_UNIX sockets.
//!
//! * Host → guest: a host client connects to `uds_path`, sends `CONNECT <port>\n`; the device
//!   sends the guest a REQUEST for that port and, once the guest accepts (RESPONSE), writes
//!   `OK <host port>\n` to the client, after which the socket carries the stream. A guest RST
//!   (nobody listens) closes the client's socket.
//! * Guest → host: a guest connection to CID 2 port P connects to the Unix socket
//!   `<uds_path>_P`; when nothing listens there, the guest gets an RST.
//!
//! Pieces:
//! * [`config`]: features, queues, config space (the guest CID).
//! * `packet`: the header and the validation of every guest header.
//! * `conn`: one connection's state machine and credit-based flow control.
//! * `muxer`: all host sockets in one epoll set, connection lookup, packets for the guest.
//! * `unix`: the listener, `CONNECT` lines, non-blocking connects.
//! * `queue`: moving packets between the rings and the muxer; `event`: the event-loop
//!   subscriber; `persist`: save/restore (connections are reset, see there).
//!
//! Three queues: rx (device → guest packets), tx (guest → device), event (transport reset).
//! Guest chains are hostile: every header is copied out once and validated before use, lengths
//! are checked against what the chain really holds, writable buffers on TX and readable ones
//! on RX are refused, and a broken chain costs the guest that packet, never a panic.

pub mod config;
mod conn;
mod event;
mod muxer;
pub mod packet;
mod persist;
mod queue;
#[cfg(test)]
mod tests;
mod unix;

pub use persist::VsockState;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::avail::AvailReader;
use super::fastmem::FastMem;
use super::used::{UsedState, UsedWriter};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::GuestMemory;
use muxer::Muxer;

/// Counters, readable from any thread (metrics). "rx" is device → guest, "tx" guest → device,
/// as the queues are named.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets given to the guest, and their payload bytes.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets taken from the guest, and their payload bytes.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub conns_added: AtomicU64,
    pub conns_removed: AtomicU64,
    /// Connections dropped by a device or transport reset.
    pub conns_killed: AtomicU64,
    /// Connections refused: nothing listens at `<uds_path>_P`, or too many connections.
    pub conns_refused: AtomicU64,
    /// Guest packets refused by validation (and chains too broken to hold a packet).
    pub bad_packets: AtomicU64,
    pub tx_write_fails: AtomicU64,
    pub rx_read_fails: AtomicU64,
    /// Queue kicks.
    pub rx_queue_events: AtomicU64,
    pub tx_queue_events: AtomicU64,
    /// Transport-reset events delivered to the guest.
    pub reset_events: AtomicU64,
}

fn count(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One live queue.
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
    queues: [ActiveQueue; 3],
}

/// One device-writable buffer of an RX or event chain.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A virtio-vsock device.
pub struct Vsock {
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 3],
    activate_evt: EventFd,
    /// The queue kick eventfds from the transport, kept across resets (they never change).
    queue_evts: Vec<Arc<EventFd>>,
    queues_registered: bool,
    active: Option<Active>,
    muxer: Muxer,
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET waits for an event-queue buffer (after a restore).
    reset_event_pending: bool,
    /// A TX packet (header and payload), copied out of the guest once; allocated with the
    /// device.
    tx_buf: Vec<u8>,
    /// Host data for one RX packet; allocated with the device.
    rx_buf: Vec<u8>,
    segments: Vec<Segment>,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// A device for guest CID `guest_cid`, listening on `uds_path` (bound now, so host clients
    /// can connect before the guest runs).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        if !(config::MIN_GUEST_CID..=config::MAX_GUEST_CID).contains(&guest_cid) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "guest CID {guest_cid} outside {}..={}",
                    config::MIN_GUEST_CID,
                    config::MAX_GUEST_CID
                ),
            ));
        }
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            avail_features: config::features(),
            acked_features: 0,
            queue_sizes: [config::QUEUE_SIZE; 3],
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            queue_evts: Vec::new(),
            queues_registered: false,
            active: None,
            muxer: Muxer::new(guest_cid, uds_path, metrics.clone())?,
            reset_event_pending: false,
            tx_buf: vec![0u8; packet::HDR_LEN + packet::MAX_PAYLOAD as usize],
            rx_buf: vec![0u8; packet::MAX_PAYLOAD as usize],
            segments: Vec::with_capacity(queue::MAX_SEGMENTS),
            metrics,
        })
    }

    /// `Vsock::new` wrapped for the VMM: the same `Arc` is the transport's device and the
    /// event-loop subscriber.
    pub fn new_shared(guest_cid: u64, uds_path: &Path) -> io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new(guest_cid, uds_path)?)))
    }

    pub fn guest_cid(&self) -> u64 {
        self.muxer.guest_cid()
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
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
        config::read_config(self.muxer.guest_cid(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-vsock: config write at {offset:#x} ({} bytes) ignored: read-only",
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
        if got != 3 {
            return Err(ActivateError::QueueCount { expected: 3, got });
        }
        let mut evts = Vec::with_capacity(3);
        let mut qs = Vec::with_capacity(3);
        for (i, VirtioQueue { queue, notify }) in queues.into_iter().enumerate() {
            // The rings must lie in one memory region each: they are mapped once per pass.
            if !queue.ready()
                || !queue.is_valid(&mem)
                || UsedWriter::new(&FastMem::new(&mem), &queue).is_err()
                || AvailReader::new(&FastMem::new(&mem), &queue).is_err()
            {
                return Err(ActivateError::BadQueue(i));
            }
            evts.push(notify);
            qs.push(ActiveQueue {
                queue,
                broken: false,
                used_state: UsedState::default(),
            });
        }
        let Ok(queues) = <[ActiveQueue; 3]>::try_from(qs) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        self.queue_evts = evts;
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        // The event thread registers the queue fds and looks at the queues.
        self.activate_evt.write(1)?;
        Ok(())
    }

    /// The driver reset the device: every connection goes (host clients see their sockets
    /// closed), as the guest forgets them too.
    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.reset_event_pending = false;
        self.muxer.reset_connections();
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.queue.state()).collect())
            .unwrap_or_default()
    }
}
