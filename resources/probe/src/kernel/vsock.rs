//! `vsock`: a minimal polled virtio-vsock driver on the first vsock device (id 19).
//!
//! 1. Reads the guest CID from config space, offers 8 RX buffers and 4 event buffers, prints
//!    `probe: vsock: listening cid=C port=P` (`probe.vsock_port`, default 52).
//! 2. Accepts connections to that port and echoes every byte back; a connection the host
//!    shuts down is closed (SHUTDOWN both ways, then the device's RST). Goes on once
//!    `probe.vsock_accept` connections (default 1; up to 128 at once) have ended.
//! 3. With `probe.vsock_refused=R`: connects to host port R and expects an RST.
//! 4. With `probe.vsock_connect=Q`: connects to host port Q, sends `probe.vsock_bytes` bytes
//!    of the blk pattern (seed Q), expects the same bytes back (CRC-32 compared), shuts down.
//! 5. Waits for `probe.vsock_resets` transport-reset events (a snapshot restore or migration),
//!    printing `probe: vsock: transport reset N` for each.
//!
//! The driver advertises 64 KiB of receive buffer and keeps to the host's credit; every
//! header from the device is checked before use (lengths against the used length).

use super::virtio::{Device, Queue, QueueMem, CONFIG};
use super::{tsc, Global, State};
use ferry_probe::crc32::Crc32;
use ferry_probe::fmt::LineBuf;
use ferry_probe::pattern;
use ferry_probe::virtq::VIRTQ_DESC_F_WRITE as WRITE;
use ferry_probe::vsock::*;

const DEVICE_ID_VSOCK: u32 = 19;
const PAYLOAD: usize = 4096;
const RX_BUF: usize = HDR_LEN + PAYLOAD;
const NRX: usize = 8;
const NEV: usize = 4;
const BUF_ALLOC: u32 = 64 << 10;
const MAX_CONNS: usize = 128;
/// Longest wait for each phase.
const TIMEOUT_MS: u64 = 120_000;
/// Guest ports of the outgoing connections.
const REFUSED_SRC_PORT: u32 = 40_000;
const CONNECT_SRC_PORT: u32 = 40_001;

#[repr(C, align(4096))]
struct Bufs {
    rx: [[u8; RX_BUF]; NRX],
    tx: [u8; RX_BUF],
    ev: [[u8; 8]; NEV],
}

static BUFS: Global<Bufs> = Global::new(Bufs {
    rx: [[0; RX_BUF]; NRX],
    tx: [0; RX_BUF],
    ev: [[0; 8]; NEV],
});
static RXQ: Global<QueueMem> = Global::new(QueueMem([0; 4096]));
static TXQ: Global<QueueMem> = Global::new(QueueMem([0; 4096]));
static EVQ: Global<QueueMem> = Global::new(QueueMem([0; 4096]));

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Free,
    Connecting,
    Established,
    /// We sent SHUTDOWN; waiting for the device's RST.
    Closing,
}

#[derive(Clone, Copy)]
struct Conn {
    state: ConnState,
    local: u32,
    peer: u32,
    outgoing: bool,
    /// Bytes received (our fwd_cnt: everything is consumed at once).
    fwd_cnt: u32,
    /// Bytes sent, and the host's credit figures.
    sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    got: u64,
    crc: Crc32,
}

const FREE: Conn = Conn {
    state: ConnState::Free,
    local: 0,
    peer: 0,
    outgoing: false,
    fwd_cnt: 0,
    sent: 0,
    peer_buf_alloc: 0,
    peer_fwd_cnt: 0,
    got: 0,
    crc: Crc32::new(),
};

struct Vs {
    rx: Queue,
    tx: Queue,
    ev: Queue,
    cid: u64,
    port: u32,
    conns: [Conn; MAX_CONNS],
    /// Echo connections that ended.
    served: u64,
    resets: u64,
    /// The refused connection got its RST.
    refused: bool,
}

fn rx_addr(i: usize) -> u64 {
    // SAFETY: in-bounds place projection on a static.
    unsafe { core::ptr::addr_of_mut!((*BUFS.ptr()).rx[i % NRX]) as u64 }
}

fn ev_addr(i: usize) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::addr_of_mut!((*BUFS.ptr()).ev[i % NEV]) as u64 }
}

fn tx_buf() -> &'static mut [u8; RX_BUF] {
    // SAFETY: only the driver touches it, and the device only while a send waits for it.
    unsafe { &mut (*BUFS.ptr()).tx }
}

/// Runs the test on the first vsock device.
pub fn run(st: &State) {
    let Some(d) = st
        .cfg
        .virtio()
        .iter()
        .find_map(|dev| Device::probe(dev).filter(|(_, id)| *id == DEVICE_ID_VSOCK))
        .map(|(d, _)| d)
    else {
        super::fail_str("no virtio-vsock device");
        return;
    };
    let mut l = LineBuf::new();
    match test_device(&d, st, &mut l) {
        Ok(()) => super::pass(&l),
        Err(reason) => {
            l.byte(b' ').str(reason);
            super::fail(&l);
        }
    }
    d.reset();
}

fn test_device(d: &Device, st: &State, l: &mut LineBuf) -> Result<(), &'static str> {
    d.negotiate(0)?;
    // SAFETY: the queue pages are used by this one device; it is reset before the test ends.
    let (rx, tx, ev) = unsafe {
        (
            d.queue(0, &mut *RXQ.ptr())?,
            d.queue(1, &mut *TXQ.ptr())?,
            d.queue(2, &mut *EVQ.ptr())?,
        )
    };
    d.driver_ok();
    let cid = u64::from(d.read(CONFIG)) | u64::from(d.read(CONFIG + 4)) << 32;
    let mut v = Vs {
        rx,
        tx,
        ev,
        cid,
        port: st.cfg.vsock_port,
        conns: [FREE; MAX_CONNS],
        served: 0,
        resets: 0,
        refused: false,
    };
    for i in 0..NRX {
        v.rx.set_desc(i as u16, rx_addr(i), RX_BUF as u32, WRITE, 0);
        v.rx.push(i as u16);
    }
    v.rx.notify();
    for i in 0..NEV {
        v.ev.set_desc(i as u16, ev_addr(i), 8, WRITE, 0);
        v.ev.push(i as u16);
    }
    v.ev.notify();
    let mut line = super::line_for(b"vsock");
    line.str("listening cid=")
        .dec(cid)
        .str(" port=")
        .dec(u64::from(v.port));
    super::say(&line);

    let deadline = tsc::deadline_ms(TIMEOUT_MS);
    while v.served < st.cfg.vsock_accept {
        v.poll()?;
        if tsc::expired(deadline) {
            l.str("served=").dec(v.served);
            return Err("timeout waiting for host connections");
        }
    }
    if let Some(port) = st.cfg.vsock_refused {
        let c = v.open(REFUSED_SRC_PORT, port)?;
        let deadline = tsc::deadline_ms(TIMEOUT_MS);
        while v.conns[c].state == ConnState::Connecting {
            v.poll()?;
            if tsc::expired(deadline) {
                return Err("timeout waiting for the refusal");
            }
        }
        if !v.refused {
            return Err("a connection to a port nobody listens on was accepted");
        }
    }
    let mut checked = 0u64;
    if let Some(port) = st.cfg.vsock_connect {
        checked = v.connect_and_check(port, st.cfg.vsock_bytes)?;
    }
    let deadline = tsc::deadline_ms(TIMEOUT_MS);
    while v.resets < st.cfg.vsock_resets {
        v.poll()?;
        if tsc::expired(deadline) {
            return Err("timeout waiting for a transport reset");
        }
    }
    l.str("cid=")
        .dec(cid)
        .str(" served=")
        .dec(v.served)
        .str(" echoed_out=")
        .dec(checked)
        .str(" resets=")
        .dec(v.resets);
    Ok(())
}

impl Vs {
    fn hdr(&self, c: &Conn, op: u16, len: u32, flags: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.local,
            dst_port: c.peer,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// Sends one packet and waits until the device took it.
    fn send(&mut self, h: &Hdr, payload: &[u8]) -> Result<(), &'static str> {
        let buf = tx_buf();
        let n = payload.len().min(PAYLOAD);
        let (head, body) = buf.split_at_mut(HDR_LEN);
        let head: &mut [u8; HDR_LEN] = head.try_into().map_err(|_| "header size")?;
        h.write(head);
        body[..n].copy_from_slice(&payload[..n]);
        self.tx
            .set_desc(0, buf.as_ptr() as u64, (HDR_LEN + n) as u32, 0, 0);
        self.tx.push(0);
        self.tx.notify();
        let deadline = tsc::deadline_ms(TIMEOUT_MS);
        loop {
            if self.tx.pop_used().is_some() {
                return Ok(());
            }
            if tsc::expired(deadline) {
                return Err("timeout sending a packet");
            }
        }
    }

    fn send_on(
        &mut self,
        c: usize,
        op: u16,
        flags: u32,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        let h = self.hdr(&self.conns[c], op, payload.len() as u32, flags);
        self.send(&h, payload)?;
        self.conns[c].sent = self.conns[c].sent.wrapping_add(payload.len() as u32);
        Ok(())
    }

    /// RST for a packet that names no connection of ours.
    fn send_rst(&mut self, h: &Hdr) -> Result<(), &'static str> {
        let c = Conn {
            local: h.dst_port,
            peer: h.src_port,
            ..FREE
        };
        let r = self.hdr(&c, OP_RST, 0, 0);
        self.send(&r, &[])
    }

    fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state != ConnState::Free && c.local == local && c.peer == peer)
    }

    fn alloc(&mut self, local: u32, peer: u32, outgoing: bool) -> Result<usize, &'static str> {
        let i = self
            .conns
            .iter()
            .position(|c| c.state == ConnState::Free)
            .ok_or("too many connections")?;
        self.conns[i] = Conn {
            state: ConnState::Connecting,
            local,
            peer,
            outgoing,
            ..FREE
        };
        Ok(i)
    }

    /// Opens a connection to host port `port` from guest port `local`.
    fn open(&mut self, local: u32, port: u32) -> Result<usize, &'static str> {
        let c = self.alloc(local, port, true)?;
        self.send_on(c, OP_REQUEST, 0, &[])?;
        Ok(c)
    }

    fn connect_and_check(&mut self, port: u32, bytes: u64) -> Result<u64, &'static str> {
        let c = self.open(CONNECT_SRC_PORT, port)?;
        let deadline = tsc::deadline_ms(TIMEOUT_MS);
        while self.conns[c].state == ConnState::Connecting {
            self.poll()?;
            if tsc::expired(deadline) {
                return Err("timeout connecting to the host");
            }
        }
        if self.conns[c].state != ConnState::Established {
            return Err("the host refused the connection");
        }
        let mut sent_crc = Crc32::new();
        let mut chunk = [0u8; PAYLOAD];
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(PAYLOAD as u64) as usize;
            let k = &self.conns[c];
            if credit(k.peer_buf_alloc, k.sent, k.peer_fwd_cnt) < n as u32 {
                // Wait for the host's credit (and keep receiving the echo meanwhile).
                self.poll()?;
                if tsc::expired(deadline) {
                    return Err("timeout waiting for host credit");
                }
                continue;
            }
            pattern::fill(u64::from(port), off, &mut chunk[..n]);
            sent_crc.update(&chunk[..n]);
            self.send_on(c, OP_RW, 0, &chunk[..n])?;
            off += n as u64;
            // Take what came back so far, so the device never waits on our buffers.
            while self.poll()? {}
        }
        while self.conns[c].got < bytes {
            self.poll()?;
            if self.conns[c].state != ConnState::Established {
                return Err("the host closed before echoing everything");
            }
            if tsc::expired(deadline) {
                return Err("timeout waiting for the echo");
            }
        }
        if self.conns[c].got != bytes || self.conns[c].crc.finish() != sent_crc.finish() {
            return Err("the echo differs from what was sent");
        }
        self.send_on(c, OP_SHUTDOWN, SHUTDOWN_BOTH, &[])?;
        self.conns[c].state = ConnState::Closing;
        while self.conns[c].state != ConnState::Free {
            self.poll()?;
            if tsc::expired(deadline) {
                return Err("timeout waiting for the host's RST");
            }
        }
        Ok(bytes)
    }

    /// Handles one used RX buffer or event, if any; returns whether there was one.
    fn poll(&mut self) -> Result<bool, &'static str> {
        if let Some((id, _)) = self.ev.pop_used() {
            // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (the only event): every connection is gone.
            self.resets += 1;
            self.conns = [FREE; MAX_CONNS];
            let mut line = super::line_for(b"vsock");
            line.str("transport reset ").dec(self.resets);
            super::say(&line);
            let i = usize::from(id);
            self.ev.set_desc(id, ev_addr(i), 8, WRITE, 0);
            self.ev.push(id);
            self.ev.notify();
            return Ok(true);
        }
        let Some((id, len)) = self.rx.pop_used() else {
            return Ok(false);
        };
        let i = usize::from(id) % NRX;
        let addr = rx_addr(i);
        let r = self.packet(addr, len);
        self.rx.set_desc(id, addr, RX_BUF as u32, WRITE, 0);
        self.rx.push(id);
        self.rx.notify();
        r.map(|()| true)
    }

    fn packet(&mut self, addr: u64, len: u32) -> Result<(), &'static str> {
        // SAFETY: `addr` is one of our RX buffers, which the device has handed back.
        let buf = unsafe { &*(addr as *const [u8; RX_BUF]) };
        let (head, body) = buf.split_at(HDR_LEN);
        let head: &[u8; HDR_LEN] = head.try_into().map_err(|_| "header size")?;
        let h = Hdr::parse(head);
        if (len as usize) < HDR_LEN || h.len as usize > (len as usize - HDR_LEN).min(PAYLOAD) {
            return Err("the device's used length does not cover its packet");
        }
        if h.src_cid != HOST_CID || h.dst_cid != self.cid || h.type_ != TYPE_STREAM {
            return Err("a packet with the wrong addresses or type");
        }
        let payload = &body[..h.len as usize];
        let Some(c) = self.find(h.dst_port, h.src_port) else {
            return match h.op {
                OP_REQUEST if h.dst_port == self.port => {
                    let c = self.alloc(h.dst_port, h.src_port, false)?;
                    self.conns[c].state = ConnState::Established;
                    self.credit_from(c, &h);
                    self.send_on(c, OP_RESPONSE, 0, &[])
                }
                OP_RST => Ok(()),
                _ => self.send_rst(&h),
            };
        };
        self.credit_from(c, &h);
        match h.op {
            OP_RESPONSE if self.conns[c].state == ConnState::Connecting => {
                self.conns[c].state = ConnState::Established;
            }
            OP_RST => {
                let k = self.conns[c];
                if k.outgoing && k.state == ConnState::Connecting && k.local == REFUSED_SRC_PORT {
                    self.refused = true;
                }
                if !k.outgoing && k.state == ConnState::Closing {
                    self.served += 1;
                }
                self.conns[c] = FREE;
            }
            OP_RW => {
                let k = &mut self.conns[c];
                k.fwd_cnt = k.fwd_cnt.wrapping_add(h.len);
                if k.outgoing {
                    k.got += u64::from(h.len);
                    k.crc.update(payload);
                } else {
                    if credit(k.peer_buf_alloc, k.sent, k.peer_fwd_cnt) < h.len {
                        return Err("no host credit left to echo");
                    }
                    self.send_on(c, OP_RW, 0, payload)?;
                }
            }
            OP_SHUTDOWN if !self.conns[c].outgoing => {
                // Everything was echoed as it came: close both ways, the device answers RST.
                self.send_on(c, OP_SHUTDOWN, SHUTDOWN_BOTH, &[])?;
                self.conns[c].state = ConnState::Closing;
            }
            OP_SHUTDOWN => self.conns[c].state = ConnState::Closing,
            OP_CREDIT_REQUEST => self.send_on(c, OP_CREDIT_UPDATE, 0, &[])?,
            OP_CREDIT_UPDATE => {}
            _ => return Err("an unexpected packet on a connection"),
        }
        Ok(())
    }

    fn credit_from(&mut self, c: usize, h: &Hdr) {
        self.conns[c].peer_buf_alloc = h.buf_alloc;
        self.conns[c].peer_fwd_cnt = h.fwd_cnt;
    }
}
