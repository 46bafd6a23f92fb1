//! The connection multiplexer: every host-side socket of one vsock device (the listener, host
//! clients still sending their `CONNECT` line, and connections) in one epoll set of its own,
//! which the device's event-loop subscriber watches as a single fd. Many connections cost no
//! thread each; the epoll set is level-triggered and a connection is watched only for what it
//! can act on now (see [`Conn::interest`]), so an idle or credit-starved connection never wakes
//! the device.
//!
//! Packets for the guest are produced on demand when the device has an RX buffer: connections
//! with something to send wait in a round-robin queue, and RSTs answering packets that name no
//! connection wait in a bounded queue of their own.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, Outcome, State};
use super::packet::{BadPacket, Header, Op, Verdict, HOST_CID, TYPE_STREAM};
use super::unix::{bind_listener, connect_nonblocking, port_path, ConnectLine, LineStatus};
use super::{count, VsockMetrics};

/// Most connections at once; a guest REQUEST or host CONNECT beyond it is refused.
pub const MAX_CONNS: usize = 1024;
/// Most host clients that connected and have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Most RSTs waiting for an RX buffer; beyond it a reply is dropped (the guest's socket then
/// times out instead of failing fast, and only a guest that floods gets there).
const MAX_PENDING_RST: usize = 256;
/// First port assigned to host-initiated connections (as Firecracker: `OK 1073741824`).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Events taken from the epoll set per wake-up.
const EVENT_BATCH: usize = 64;
const LISTENER_TOKEN: u64 = u64::MAX;

enum Entry {
    Handshake(UnixStream, ConnectLine),
    Conn(Conn),
}

struct Slot {
    /// Bumped whenever the slot is reused, so a stale token from the same epoll batch (or a
    /// stale queue entry) never reaches the new occupant.
    generation: u32,
    entry: Option<Entry>,
}

/// The host side of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// (local port, guest port) → slot.
    conns: HashMap<(u32, u32), usize>,
    handshakes: usize,
    /// Connections with something for the guest, as (slot, generation).
    rx_queue: VecDeque<(usize, u32)>,
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    events: Vec<EpollEvent>,
    metrics: Arc<VsockMetrics>,
}

fn token(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

impl Muxer {
    /// Binds the listener at `uds_path` (see [`bind_listener`]).
    pub fn new(guest_cid: u64, uds_path: &Path, metrics: Arc<VsockMetrics>) -> io::Result<Self> {
        let listener = bind_listener(uds_path)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            conns: HashMap::new(),
            handshakes: 0,
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            events: vec![EpollEvent::default(); EVENT_BATCH],
            metrics,
        })
    }

    /// The epoll set's fd, readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset, or the transport reset the guest is told about):
    /// host clients see their sockets closed. Clients still sending `CONNECT` are kept.
    pub fn reset_connections(&mut self) {
        let slots: Vec<usize> = self.conns.values().copied().collect();
        for slot in slots {
            self.remove(slot);
            count(&self.metrics.conns_killed, 1);
        }
        self.rx_queue.clear();
        self.rst_queue.clear();
    }

    /// Whether a packet waits for an RX buffer.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    fn alloc(&mut self, entry: Entry) -> (usize, u32) {
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot];
            s.generation = s.generation.wrapping_add(1);
            s.entry = Some(entry);
            (slot, s.generation)
        } else {
            self.slots.push(Slot {
                generation: 0,
                entry: Some(entry),
            });
            (self.slots.len() - 1, 0)
        }
    }

    /// Removes a slot's entry; its socket is closed (which also takes it out of the epoll set).
    fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        match s.entry.take() {
            Some(Entry::Conn(c)) => {
                self.conns.remove(&(c.local_port, c.peer_port));
                count(&self.metrics.conns_removed, 1);
                count(&self.metrics.tx_write_fails, c.counts.write_fails);
                count(&self.metrics.rx_read_fails, c.counts.read_fails);
            }
            Some(Entry::Handshake(..)) => self.handshakes -= 1,
            None => return,
        }
        self.free.push(slot);
    }

    fn conn_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        match self.slots.get_mut(slot)?.entry.as_mut()? {
            Entry::Conn(c) => Some(c),
            Entry::Handshake(..) => None,
        }
    }

    /// After a connection changed: its epoll interest follows what it can do, and it joins the
    /// RX queue if it has a packet for the guest. A connection with no interest is taken out of
    /// the epoll set entirely, since EPOLLHUP would otherwise wake the device for nothing.
    fn refresh(&mut self, slot: usize) {
        let Some(Slot {
            generation,
            entry: Some(Entry::Conn(c)),
        }) = self.slots.get_mut(slot)
        else {
            return;
        };
        let want = c.interest();
        if want != c.registered {
            let fd = c.stream().as_raw_fd();
            let ev = EpollEvent::new(EventSet::from_bits_truncate(want), token(slot, *generation));
            let op = match (c.registered, want) {
                (0, _) => ControlOperation::Add,
                (_, 0) => ControlOperation::Delete,
                _ => ControlOperation::Modify,
            };
            match self.epoll.ctl(op, fd, ev) {
                Ok(()) => c.registered = want,
                Err(e) => {
                    log::warn!("vsock: cannot watch a host socket: {e}");
                    c.reset();
                }
            }
        }
        if !c.queued && c.has_pending() {
            c.queued = true;
            self.rx_queue.push_back((slot, *generation));
        }
    }

    /// Handles whatever the host sockets reported since the last call.
    pub fn process_host_events(&mut self) {
        let n = match self.epoll.wait(0, &mut self.events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("vsock: epoll_wait: {e}");
                }
                return;
            }
        };
        for i in 0..n {
            let ev = self.events[i];
            let data = ev.data();
            if data == LISTENER_TOKEN {
                self.accept_clients();
                continue;
            }
            let slot = (data & 0xffff_ffff) as usize;
            let generation = (data >> 32) as u32;
            if self.slots.get(slot).map(|s| s.generation) != Some(generation) {
                continue;
            }
            let bits = ev.events();
            let hangup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
            match self.slots[slot].entry.as_mut() {
                Some(Entry::Handshake(..)) => self.handshake(slot),
                Some(Entry::Conn(c)) => {
                    if bits & (libc::EPOLLIN as u32 | hangup) != 0 {
                        c.on_host_readable();
                    }
                    if bits & (libc::EPOLLOUT as u32 | hangup) != 0 {
                        c.on_host_writable();
                    }
                    self.refresh(slot);
                }
                None => {}
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    }
                    return;
                }
            };
            if self.handshakes >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNS {
                count(&self.metrics.conns_refused, 1);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let (slot, generation) = self.alloc(Entry::Handshake(stream, ConnectLine::default()));
            self.handshakes += 1;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token(slot, generation)),
                )
                .is_err()
            {
                self.remove(slot);
            }
        }
    }

    /// A host client sent (part of) its first line.
    fn handshake(&mut self, slot: usize) {
        let status = match self.slots[slot].entry.as_mut() {
            Some(Entry::Handshake(stream, line)) => line.read_from(stream),
            _ => return,
        };
        let port = match status {
            LineStatus::Partial => return,
            LineStatus::Invalid => {
                self.remove(slot);
                return;
            }
            LineStatus::Connect(port) => port,
        };
        if self.conns.len() >= MAX_CONNS {
            count(&self.metrics.conns_refused, 1);
            self.remove(slot);
            return;
        }
        let local = self.free_local_port(port);
        let Some(Entry::Handshake(stream, _)) = self.slots[slot].entry.take() else {
            return;
        };
        self.handshakes -= 1;
        let mut conn = Conn::local(stream, local, port);
        // Still registered for input as a handshake; `refresh` takes it from there.
        conn.registered = libc::EPOLLIN as u32;
        self.slots[slot].entry = Some(Entry::Conn(conn));
        self.conns.insert((local, port), slot);
        count(&self.metrics.conns_added, 1);
        self.refresh(slot);
    }

    /// A host port for a new host-initiated connection to guest port `peer`.
    fn free_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) => p,
                None => FIRST_LOCAL_PORT,
            };
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    /// A guest packet that failed validation.
    pub fn on_bad_packet(&mut self, h: &Header, why: BadPacket) {
        count(&self.metrics.bad_packets, 1);
        log::debug!("vsock: bad packet from the guest ({why:?}): {h:?}");
        if why.verdict(h) == Verdict::Drop {
            return;
        }
        match self.conns.get(&(h.dst_port, h.src_port)).copied() {
            // Only a packet naming the host as destination can name one of its connections.
            Some(slot) if h.dst_cid == HOST_CID => {
                if let Some(c) = self.conn_mut(slot) {
                    c.reset();
                }
                self.refresh(slot);
            }
            _ => self.reply_rst(h),
        }
    }

    /// RST from the address the guest targeted.
    fn reply_rst(&mut self, h: &Header) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        });
    }

    /// A validated guest packet; `payload` holds its `len` data bytes.
    pub fn on_guest_packet(&mut self, h: &Header, op: Op, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        let Some(&slot) = self.conns.get(&key) else {
            match op {
                Op::Request => self.guest_connect(h),
                // Nothing to reset.
                Op::Rst => {}
                _ => self.reply_rst(h),
            }
            return;
        };
        let outcome = match self.conn_mut(slot) {
            Some(c) => c.on_guest_packet(h, op, payload),
            None => return,
        };
        if outcome == Outcome::Remove {
            self.remove(slot);
        } else {
            self.refresh(slot);
        }
    }

    /// The guest connects to host port `dst_port`: `<uds_path>_<dst_port>`, or RST.
    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNS {
            count(&self.metrics.conns_refused, 1);
            self.reply_rst(h);
            return;
        }
        let path = port_path(&self.uds_path, h.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connection to {}: {e}", path.display());
                count(&self.metrics.conns_refused, 1);
                self.reply_rst(h);
                return;
            }
        };
        let conn = Conn::peer(stream, h.dst_port, h);
        let (slot, _) = self.alloc(Entry::Conn(conn));
        self.conns.insert((h.dst_port, h.src_port), slot);
        count(&self.metrics.conns_added, 1);
        self.refresh(slot);
    }

    /// The next packet for the guest, with at most `data.len()` bytes of payload read into
    /// `data`; `None` when nothing waits.
    pub fn next_rx(&mut self, data: &mut [u8]) -> Option<Header> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some(h);
        }
        while let Some((slot, generation)) = self.rx_queue.pop_front() {
            if self.slots.get(slot).map(|s| s.generation) != Some(generation) {
                continue;
            }
            let guest_cid = self.guest_cid;
            let Some(c) = self.conn_mut(slot) else {
                continue;
            };
            c.queued = false;
            let Some(mut h) = c.next_packet(data) else {
                self.refresh(slot);
                continue;
            };
            h.src_cid = HOST_CID;
            h.dst_cid = guest_cid;
            h.src_port = c.local_port;
            h.dst_port = c.peer_port;
            h.type_ = TYPE_STREAM;
            if h.op == Op::Rst as u16 && c.state == State::Closing {
                self.remove(slot);
            } else {
                // Back of the queue if it has more: connections take turns.
                self.refresh(slot);
            }
            return Some(h);
        }
        None
    }
}
