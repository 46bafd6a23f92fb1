//! One vsock stream between a guest port and a host Unix socket: the connection state machine
//! and the credit accounting of virtio 1.2 §5.10.6.3.
//!
//! Credit in both directions, so no buffer grows without bound:
//! * guest → host: the device advertises [`CONN_BUF_SIZE`] as `buf_alloc` and counts in
//!   `fwd_cnt` the bytes it has written to the host socket. Guest data the host socket does not
//!   take at once waits in `tx_buf`, which therefore never holds more than `buf_alloc` bytes from
//!   a guest that respects its credit; a guest that sends past its credit is reset. A slow host
//!   reader thus stops the guest's sender (its credit runs out), not the device's memory.
//! * host → guest: the device reads from the host socket only as much as the guest's last
//!   advertised `buf_alloc - (rx_cnt - fwd_cnt)` allows; with no credit the socket is not
//!   watched for input (the host writer then blocks on its own socket buffer) and a
//!   CREDIT_REQUEST asks the guest for an update.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes of guest data the device buffers per connection (its advertised `buf_alloc`).
pub const CONN_BUF_SIZE: u32 = 256 << 10;

/// The device tells the guest about freed buffer space once this much was forwarded since the
/// last header it sent (every packet it sends carries `fwd_cnt`, so most updates piggyback).
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// epoll interest bits the connection wants on its host socket.
pub const WANT_READ: u32 = libc::EPOLLIN as u32;
pub const WANT_WRITE: u32 = libc::EPOLLOUT as u32;

/// Control packets waiting to be sent to the guest (bits of `Conn::pending`).
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;
const P_SHUTDOWN: u8 = 16;
const P_RST: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host client asked for the guest's port; REQUEST sent (or queued), no answer yet.
    LocalInit,
    /// Both ends connected (a guest-initiated connection is here as soon as the host socket
    /// connected; its RESPONSE is the first packet the guest gets).
    Established,
    /// An RST is queued: the connection is removed once it is sent, and ignores the guest.
    Closing,
}

/// What the muxer must do after a guest packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing beyond what the connection queued itself.
    Keep,
    /// Remove the connection now, sending nothing (the guest reset it).
    Remove,
}

/// Counters a connection reports to the device's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoCounts {
    /// Guest bytes written to the host socket.
    pub to_host: u64,
    /// Host bytes given to the guest.
    pub to_guest: u64,
    pub write_fails: u64,
    pub read_fails: u64,
}

/// One connection.
pub struct Conn {
    stream: UnixStream,
    /// The host side's vsock port: the guest's destination port for a guest-initiated
    /// connection, an assigned port (from 2^30) for a host-initiated one.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: State,
    /// Guest data the host socket has not taken yet (at most `CONN_BUF_SIZE` bytes).
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    pending: u8,
    /// SHUTDOWN flags queued for the guest.
    shutdown_flags: u32,
    /// The host socket reported input (or EOF/error) not yet read.
    host_readable: bool,
    /// The host socket reached EOF: the guest was (or will be) told SHUTDOWN(SEND).
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shutdown: u32,
    /// A CREDIT_REQUEST went out and no credit came back yet (ask once per stall).
    credit_requested: bool,
    /// The epoll interest currently registered for the host socket.
    pub registered: u32,
    /// In the muxer's queue of connections with something for the guest.
    pub queued: bool,
    pub counts: IoCounts,
}

impl Conn {
    /// A host-initiated connection: the host client sent `CONNECT <peer_port>`.
    pub fn local(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, State::LocalInit);
        c.pending = P_REQUEST;
        c
    }

    /// A guest-initiated connection whose host socket connected: RESPONSE is queued.
    pub fn peer(stream: UnixStream, local_port: u32, request: &Header) -> Self {
        let mut c = Self::new(stream, local_port, request.src_port, State::Established);
        c.update_peer_credit(request);
        c.pending = P_RESPONSE;
        c
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            pending: 0,
            shutdown_flags: 0,
            host_readable: false,
            host_eof: false,
            guest_shutdown: 0,
            credit_requested: false,
            registered: 0,
            queued: false,
            counts: IoCounts::default(),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Queues an RST: the connection is over and is removed once it is sent.
    pub fn reset(&mut self) {
        self.state = State::Closing;
        self.pending = P_RST;
        self.host_readable = false;
    }

    fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take now. A guest claiming to have forwarded more than it was sent
    /// only lies to itself; the result never exceeds its `buf_alloc`.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes buffered for the host socket.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Acts on a validated guest packet addressed to this connection; `payload` is its data
    /// (RW only).
    pub fn on_guest_packet(&mut self, h: &Header, op: Op, payload: &[u8]) -> Outcome {
        if op == Op::Rst {
            return Outcome::Remove;
        }
        if self.state == State::Closing {
            return Outcome::Keep;
        }
        self.update_peer_credit(h);
        match (self.state, op) {
            (State::LocalInit, Op::Response) => {
                self.state = State::Established;
                // The acknowledgement goes out before any guest data could. The socket was just
                // accepted and has never been written: a short line always fits its buffer, so
                // a failure means the client is gone.
                let line = format!("OK {}\n", self.local_port);
                if !matches!(self.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.reset();
                }
            }
            (State::Established, Op::Rw) => self.guest_data(payload),
            (State::Established, Op::CreditUpdate) => {}
            (State::Established, Op::CreditRequest) => self.pending |= P_CREDIT_UPDATE,
            (State::Established, Op::Shutdown) => {
                self.guest_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_guest_shutdown();
            }
            // REQUEST on a live connection, RESPONSE out of turn, anything but RESPONSE or RST
            // before the guest accepted: a protocol error that ends the connection.
            _ => self.reset(),
        }
        Outcome::Keep
    }

    /// Guest data for the host: straight to the socket, the rest into `tx_buf` within credit.
    fn guest_data(&mut self, mut data: &[u8]) {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            // Data after the guest said it would send no more.
            self.reset();
            return;
        }
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            log::debug!(
                "vsock: guest port {} sent past its credit; resetting",
                self.peer_port
            );
            self.reset();
            return;
        }
        if self.tx_buf.is_empty() {
            match self.write_host(data) {
                Some(n) => data = &data[n..],
                None => return,
            }
        }
        self.tx_buf.extend(data);
    }

    /// Writes to the host socket; `None` after a hard failure (the connection is then reset).
    fn write_host(&mut self, data: &[u8]) -> Option<usize> {
        let mut done = 0;
        while done < data.len() {
            match self.stream.write(&data[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("vsock: host socket write failed: {e}");
                    self.counts.write_fails += 1;
                    self.reset();
                    return None;
                }
            }
        }
        self.forwarded(done);
        Some(done)
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        self.counts.to_host += n as u64;
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// The host socket can take more: writes out `tx_buf`.
    pub fn on_host_writable(&mut self) {
        while !self.tx_buf.is_empty() && self.state != State::Closing {
            match self.write_host_front() {
                Some(0) => break,
                Some(_) => {}
                None => return,
            }
        }
        if self.tx_buf.is_empty() {
            self.after_guest_shutdown();
        }
    }

    /// Writes the first contiguous part of `tx_buf`; returns what was written (0: the socket
    /// is full), `None` after a hard failure.
    fn write_host_front(&mut self) -> Option<usize> {
        let (front, _) = self.tx_buf.as_slices();
        let r = loop {
            match self.stream.write(front) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match r {
            Ok(n) => {
                self.tx_buf.drain(..n);
                self.forwarded(n);
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(e) => {
                log::debug!("vsock: host socket write failed: {e}");
                self.counts.write_fails += 1;
                self.reset();
                None
            }
        }
    }

    /// What the guest's SHUTDOWN means once its data is out: SEND closes the host socket's
    /// write side; both flags end the connection (the guest waits for our RST).
    fn after_guest_shutdown(&mut self) {
        if !self.tx_buf.is_empty() || self.state != State::Established {
            return;
        }
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.reset();
        }
    }

    /// The host socket reported input, EOF or an error.
    pub fn on_host_readable(&mut self) {
        if self.state == State::Established && !self.host_eof {
            self.host_readable = true;
        }
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending(&self) -> bool {
        self.pending != 0 || self.wants_to_send_data() || self.must_ask_for_credit()
    }

    /// Host data waits, the guest has no room, and it was not asked yet.
    fn must_ask_for_credit(&self) -> bool {
        self.host_readable
            && self.state == State::Established
            && self.peer_credit() == 0
            && !self.credit_requested
    }

    fn wants_to_send_data(&self) -> bool {
        self.host_readable
            && self.state == State::Established
            && self.pending & P_RESPONSE == 0
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// The epoll interest the connection needs now: input only while it can be forwarded (not
    /// already seen, the guest has credit and still receives), output while data waits.
    pub fn interest(&self) -> u32 {
        let mut want = 0;
        let receiving = self.state == State::Established
            && !self.host_eof
            && !self.host_readable
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0;
        if receiving {
            want |= WANT_READ;
        }
        if !self.tx_buf.is_empty() && self.state != State::Closing {
            want |= WANT_WRITE;
        }
        want
    }

    /// Produces the next packet for the guest. `data` is where host bytes are read into; at
    /// most `data.len()` are. Returns the header fields the connection decides (op, flags,
    /// len) with its credit filled in, or `None` when it has nothing to send.
    pub fn next_packet(&mut self, data: &mut [u8]) -> Option<Header> {
        let mut h = Header {
            buf_alloc: CONN_BUF_SIZE,
            ..Header::default()
        };
        let op = if self.pending & P_RST != 0 {
            self.pending = 0;
            Op::Rst
        } else if self.take(P_REQUEST) {
            Op::Request
        } else if self.take(P_RESPONSE) {
            Op::Response
        } else if let Some(n) = self.read_host(data) {
            h.len = n;
            Op::Rw
        } else if self.take(P_RST) {
            // The read failed.
            self.pending = 0;
            Op::Rst
        } else if self.take(P_SHUTDOWN) {
            h.flags = self.shutdown_flags;
            Op::Shutdown
        } else if self.take(P_CREDIT_REQUEST) {
            Op::CreditRequest
        } else if self.take(P_CREDIT_UPDATE) {
            Op::CreditUpdate
        } else {
            return None;
        };
        h.op = op as u16;
        h.fwd_cnt = self.fwd_cnt.0;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        // The credit update is carried by this header.
        self.pending &= !P_CREDIT_UPDATE;
        Some(h)
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }

    /// Reads host data for one RW packet, within the guest's credit.
    fn read_host(&mut self, data: &mut [u8]) -> Option<u32> {
        if !self.host_readable || self.state != State::Established {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 || self.guest_shutdown & SHUTDOWN_RCV != 0 {
            if credit == 0 && !self.credit_requested {
                self.credit_requested = true;
                self.pending |= P_CREDIT_REQUEST;
            }
            return None;
        }
        let want = credit.min(data.len());
        if want == 0 {
            return None;
        }
        let r = loop {
            match self.stream.read(&mut data[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match r {
            Ok(0) => {
                // EOF: the host sends no more. Told to the guest after any data it has.
                self.host_readable = false;
                self.host_eof = true;
                self.shutdown_flags = SHUTDOWN_SEND;
                self.pending |= P_SHUTDOWN;
                None
            }
            Ok(n) => {
                self.rx_cnt += Wrapping(n as u32);
                self.counts.to_guest += n as u64;
                Some(n as u32)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(e) => {
                log::debug!("vsock: host socket read failed: {e}");
                self.counts.read_fails += 1;
                self.reset();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::packet::TYPE_STREAM;

    fn hdr(op: Op, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut c = Conn::peer(a, 52, &hdr(Op::Request, 0, 4096, 0));
        let mut buf = [0u8; 64];
        assert_eq!(
            c.next_packet(&mut buf).map(|h| h.op),
            Some(Op::Response as u16)
        );
        (c, b)
    }

    #[test]
    fn host_to_guest_data_stays_within_the_guests_credit() {
        let (mut c, mut host) = established();
        host.write_all(&[7u8; 10000]).unwrap();
        c.on_host_readable();
        let mut buf = vec![0u8; 64 << 10];
        let h = c.next_packet(&mut buf).unwrap();
        assert_eq!((h.op, h.len), (Op::Rw as u16, 4096), "capped by buf_alloc");
        assert_eq!(c.peer_credit(), 0);
        // No credit: a CREDIT_REQUEST, and input is no longer watched.
        assert_eq!(
            c.next_packet(&mut buf).map(|h| h.op),
            Some(Op::CreditRequest as u16)
        );
        assert!(c.next_packet(&mut buf).is_none());
        assert_eq!(c.interest() & WANT_READ, 0);
        // The guest consumed 1000 bytes.
        c.on_guest_packet(&hdr(Op::CreditUpdate, 0, 4096, 1000), Op::CreditUpdate, &[]);
        assert_eq!(c.peer_credit(), 1000);
        let h = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.len, 1000);
    }

    #[test]
    fn guest_past_its_credit_is_reset_and_the_buffer_is_bounded() {
        let (mut c, _host) = established();
        // The host never reads: the socket buffer fills, then tx_buf, up to CONN_BUF_SIZE.
        let chunk = vec![1u8; 64 << 10];
        let mut sent = 0usize;
        while c.state == State::Established && sent < 64 << 20 {
            c.on_guest_packet(&hdr(Op::Rw, chunk.len() as u32, 4096, 0), Op::Rw, &chunk);
            sent += chunk.len();
            assert!(c.buffered() <= CONN_BUF_SIZE as usize);
        }
        assert_eq!(c.state, State::Closing, "reset once past credit");
        let mut buf = [0u8; 64];
        assert_eq!(c.next_packet(&mut buf).map(|h| h.op), Some(Op::Rst as u16));
    }

    #[test]
    fn buffered_data_drains_and_credit_is_reported() {
        let (mut c, mut host) = established();
        let chunk = vec![2u8; 32 << 10];
        // Fill the host socket and some of tx_buf.
        while c.buffered() == 0 {
            c.on_guest_packet(&hdr(Op::Rw, chunk.len() as u32, 4096, 0), Op::Rw, &chunk);
        }
        assert!(c.interest() & WANT_WRITE != 0);
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0;
        while c.buffered() > 0 {
            match host.read(&mut sink) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            c.on_host_writable();
        }
        assert!(got > 0);
        let mut buf = [0u8; 64];
        let h = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.op, Op::CreditUpdate as u16);
        assert_eq!(h.fwd_cnt as usize, c.counts.to_host as usize);
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
    }

    #[test]
    fn host_eof_becomes_shutdown_and_full_guest_shutdown_resets() {
        let (mut c, host) = established();
        drop(host);
        c.on_host_readable();
        let mut buf = [0u8; 64];
        let h = c.next_packet(&mut buf).unwrap();
        assert_eq!((h.op, h.flags), (Op::Shutdown as u16, SHUTDOWN_SEND));
        let mut h = hdr(Op::Shutdown, 0, 4096, 0);
        h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        c.on_guest_packet(&h, Op::Shutdown, &[]);
        assert_eq!(c.next_packet(&mut buf).map(|h| h.op), Some(Op::Rst as u16));
        assert!(c.next_packet(&mut buf).is_none());
    }

    #[test]
    fn host_initiated_connection_acknowledges_or_refuses() {
        let (a, mut client) = UnixStream::pair().unwrap();
        let mut c = Conn::local(a, 1 << 30, 52);
        let mut buf = [0u8; 64];
        assert_eq!(
            c.next_packet(&mut buf).map(|h| h.op),
            Some(Op::Request as u16)
        );
        // Data before the guest accepted is a protocol error.
        let (b, _client2) = UnixStream::pair().unwrap();
        let mut early = Conn::local(b, 1 << 30, 53);
        early.on_guest_packet(&hdr(Op::Rw, 1, 4096, 0), Op::Rw, &[1]);
        assert_eq!(early.state, State::Closing);
        // The guest accepts: the client reads OK <port>.
        c.on_guest_packet(&hdr(Op::Response, 0, 4096, 0), Op::Response, &[]);
        assert_eq!(c.state, State::Established);
        let mut line = [0u8; 14];
        client.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        // An RST from the guest removes it.
        assert_eq!(
            c.on_guest_packet(&hdr(Op::Rst, 0, 0, 0), Op::Rst, &[]),
            Outcome::Remove
        );
    }
}
