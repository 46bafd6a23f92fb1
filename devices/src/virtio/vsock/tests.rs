//! virtio-vsock tests: packets built in guest memory by a test driver, processed through the
//! real transport and device, with real Unix sockets on the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::conn::CONN_BUF_SIZE;
use super::packet::{Header, Op, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::port_path;
use super::{config, Vsock, VsockMetrics};
use crate::bus::BusDevice;
use crate::persist::Persist;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{TestDesc, TestDriver};
use crate::virtio::VirtioDevice;
use crate::GuestMemory;

const CID: u64 = 3;
const MEM: usize = 32 << 20;
const DATA: u64 = 0x100000;
const RX_BUF: u32 = HDR_LEN as u32 + 4096;
const FIRST_HOST_PORT: u32 = 1 << 30;

fn reg_w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn reg_r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// A fresh directory for one test's sockets.
fn test_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferry-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Rig {
    dev: Arc<Mutex<Vsock>>,
    t: MmioTransport,
    mem: GuestMemory,
    rx: TestDriver,
    tx: TestDriver,
    ev: TestDriver,
    next_data: u64,
    /// The RX buffer offered and not yet used: (head, address).
    rx_posted: Option<(u16, u64)>,
    dir: PathBuf,
    uds: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Programs `t` like a guest driver: every offered feature but EVENT_IDX, the three queues on
/// `drivers`, DRIVER_OK.
fn driver_ok(t: &mut MmioTransport, drivers: [&TestDriver; 3]) {
    reg_w(t, 0x70, 1);
    reg_w(t, 0x70, 3);
    let mut features = 0u64;
    for sel in 0..2 {
        reg_w(t, 0x14, sel);
        features |= u64::from(reg_r(t, 0x10)) << (32 * sel);
    }
    features &= !(1u64 << 29);
    for sel in 0..2u32 {
        reg_w(t, 0x24, sel);
        reg_w(t, 0x20, (features >> (32 * sel)) as u32);
    }
    reg_w(t, 0x70, 0xb);
    assert_eq!(reg_r(t, 0x70), 0xb, "FEATURES_OK refused");
    for (i, drv) in drivers.iter().enumerate() {
        reg_w(t, 0x30, i as u32);
        reg_w(t, 0x38, u32::from(drv.size));
        reg_w(t, 0x80, drv.desc.0 as u32);
        reg_w(t, 0x84, (drv.desc.0 >> 32) as u32);
        reg_w(t, 0x90, drv.avail.0 as u32);
        reg_w(t, 0x94, (drv.avail.0 >> 32) as u32);
        reg_w(t, 0xa0, drv.used.0 as u32);
        reg_w(t, 0xa4, (drv.used.0 >> 32) as u32);
        reg_w(t, 0x44, 1);
    }
    reg_w(t, 0x70, 0xf);
    assert_eq!(reg_r(t, 0x70), 0xf, "DRIVER_OK refused");
}

fn guest(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 256 << 10,
        fwd_cnt: 0,
    }
}

fn rig() -> Rig {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let dir = test_dir();
    let uds = dir.join("v.sock");
    let dev = Vsock::new_shared(CID, &uds).unwrap();
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let size = config::QUEUE_SIZE;
    let rx = TestDriver::new(mem.clone(), size, 0x1000);
    let tx = TestDriver::new(mem.clone(), size, 0x10000);
    let ev = TestDriver::new(mem.clone(), size, 0x20000);
    driver_ok(&mut t, [&rx, &tx, &ev]);
    Rig {
        dev,
        t,
        mem,
        rx,
        tx,
        ev,
        next_data: DATA,
        rx_posted: None,
        dir,
        uds,
    }
}

impl Rig {
    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_data + len > MEM as u64 {
            self.next_data = DATA;
        }
        let at = self.next_data;
        self.next_data += (len + 15) & !15;
        at
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    fn metric(&self, f: impl Fn(&VsockMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.dev().metrics()).load(Ordering::Relaxed)
    }

    /// Puts a packet on the TX queue (header and payload in two descriptors, as Linux does)
    /// and lets the device take it.
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let hdr_at = self.alloc(HDR_LEN as u64);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
            .unwrap();
        let mut descs = vec![TestDesc::r(hdr_at, HDR_LEN as u32)];
        if !payload.is_empty() {
            let at = self.alloc(payload.len() as u64);
            self.mem.write_slice(payload, GuestAddress(at)).unwrap();
            descs.push(TestDesc::r(at, payload.len() as u32));
        }
        self.send_chain(&descs);
    }

    fn send_chain(&mut self, descs: &[TestDesc]) {
        let head = self.tx.add_chain(descs);
        self.dev().process_tx();
        self.dev().process_rx();
        assert_eq!(self.tx.pop_used(), Some((u32::from(head), 0)));
    }

    /// Lets the device look at its host sockets.
    fn host_events(&mut self) {
        self.dev().muxer.process_host_events();
    }

    /// The next packet the device has for the guest, if any.
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        if self.rx_posted.is_none() {
            let at = self.alloc(u64::from(RX_BUF));
            let head = self.rx.add_chain(&[TestDesc::w(at, RX_BUF)]);
            self.rx_posted = Some((head, at));
        }
        self.dev().process_rx();
        let (head, len) = self.rx.pop_used()?;
        let (posted, at) = self.rx_posted.take().unwrap();
        assert_eq!(head, u32::from(posted));
        assert!(len as usize >= HDR_LEN);
        let mut raw = [0u8; HDR_LEN];
        self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
        let h = Header::parse(&raw);
        assert_eq!(
            len,
            HDR_LEN as u32 + h.len,
            "used length is header + payload"
        );
        let mut data = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(at + HDR_LEN as u64))
            .unwrap();
        Some((h, data))
    }

    fn recv_op(&mut self) -> Header {
        let (h, _) = self.recv().expect("a packet for the guest");
        h
    }

    /// A guest-initiated connection from guest port `src` to host port `port`, accepted by
    /// `listener`.
    fn guest_connect(&mut self, listener: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(guest(Op::Request, src, port), &[]);
        let h = self.recv_op();
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (Op::Response as u16, port, src)
        );
        let (s, _) = listener.accept().unwrap();
        s
    }
}

fn listen(r: &Rig, port: u32) -> UnixListener {
    UnixListener::bind(port_path(&r.uds, port)).unwrap()
}

#[test]
fn config_space_holds_the_guest_cid() {
    let r = rig();
    let d = r.dev();
    assert_eq!(d.device_type(), 19);
    let mut b = [0u8; 8];
    d.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    let mut hi = [0xffu8; 4];
    d.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    d.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4], "past the end reads zero");
    drop(d);
    for bad in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(Vsock::new(bad, &r.dir.join("x")).is_err(), "cid {bad}");
    }
}

#[test]
fn guest_connection_nobody_listens_to_is_reset() {
    let mut r = rig();
    r.send(guest(Op::Request, 1000, 99), &[]);
    let h = r.recv_op();
    assert_eq!(h.op, Op::Rst as u16);
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
    assert_eq!((h.src_port, h.dst_port), (99, 1000));
    assert!(r.recv().is_none());
    assert_eq!(r.metric(|m| &m.conns_refused), 1);
    assert_eq!(r.dev().connection_count(), 0);
}

#[test]
fn guest_connection_carries_data_both_ways_and_closes() {
    let mut r = rig();
    let l = listen(&r, 52);
    let mut host = r.guest_connect(&l, 1000, 52);
    r.send(guest(Op::Rw, 1000, 52), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    host.write_all(b"world").unwrap();
    r.host_events();
    let (h, data) = r.recv().unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (Op::Rw as u16, 52, 1000));
    assert_eq!(data, b"world");
    assert_eq!(h.fwd_cnt, 5, "the 5 bytes forwarded to the host");
    assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
    // Half close from the guest: the host reads EOF and can still write.
    let mut sd = guest(Op::Shutdown, 1000, 52);
    sd.flags = SHUTDOWN_SEND;
    r.send(sd, &[]);
    assert_eq!(host.read(&mut got).unwrap(), 0);
    host.write_all(b"late").unwrap();
    r.host_events();
    assert_eq!(r.recv().unwrap().1, b"late");
    // Full shutdown: the device answers RST and forgets the connection.
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    r.send(sd, &[]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    assert_eq!(r.dev().connection_count(), 0);
    assert_eq!(r.metric(|m| &m.tx_bytes), 5);
    assert_eq!(r.metric(|m| &m.rx_bytes), 9);
}

#[test]
fn host_eof_is_a_shutdown_for_the_guest() {
    let mut r = rig();
    let l = listen(&r, 52);
    let mut host = r.guest_connect(&l, 1000, 52);
    host.write_all(b"last words").unwrap();
    drop(host);
    r.host_events();
    assert_eq!(r.recv().unwrap().1, b"last words");
    // The data first, then the shutdown, once the device sees the EOF.
    r.host_events();
    let h = r.recv_op();
    assert_eq!((h.op, h.flags), (Op::Shutdown as u16, SHUTDOWN_SEND));
    r.send(guest(Op::Rst, 1000, 52), &[]);
    assert_eq!(r.dev().connection_count(), 0);
    assert!(r.recv().is_none());
}

#[test]
fn host_connect_waits_for_the_guest_to_accept_or_refuse() {
    let mut r = rig();
    let mut client = UnixStream::connect(&r.uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    r.host_events(); // accept
    r.host_events(); // the line
    let h = r.recv_op();
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (Op::Request as u16, FIRST_HOST_PORT, 52, CID)
    );
    r.send(guest(Op::Response, 52, FIRST_HOST_PORT), &[]);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    client.write_all(b"ping").unwrap();
    r.host_events();
    assert_eq!(r.recv().unwrap().1, b"ping");
    r.send(guest(Op::Rw, 52, FIRST_HOST_PORT), b"pong");
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");

    // Nobody listens on 53: the guest resets, the client's socket closes.
    let mut refused = UnixStream::connect(&r.uds).unwrap();
    refused.write_all(b"CONNECT 53\n").unwrap();
    r.host_events();
    r.host_events();
    let h = r.recv_op();
    assert_eq!((h.op, h.dst_port), (Op::Request as u16, 53));
    r.send(guest(Op::Rst, 53, h.src_port), &[]);
    let mut b = [0u8; 1];
    assert_eq!(refused.read(&mut b).unwrap(), 0, "closed without OK");

    // Garbage instead of CONNECT: dropped without bothering the guest.
    let mut junk = UnixStream::connect(&r.uds).unwrap();
    junk.write_all(b"HELLO\n").unwrap();
    r.host_events();
    r.host_events();
    assert_eq!(junk.read(&mut b).unwrap(), 0);
    assert!(r.recv().is_none());
    assert_eq!(r.dev().connection_count(), 1);
}

#[test]
fn packets_for_no_connection_are_reset_but_resets_are_not() {
    let mut r = rig();
    r.send(guest(Op::Rw, 1000, 7), b"data");
    let h = r.recv_op();
    assert_eq!((h.op, h.src_port, h.dst_port), (Op::Rst as u16, 7, 1000));
    r.send(guest(Op::Rst, 1000, 7), &[]);
    r.send(guest(Op::CreditUpdate, 1000, 7), &[]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    assert!(r.recv().is_none());
}

#[test]
fn hostile_chains_never_break_the_device() {
    let mut r = rig();
    let hdr_at = r.alloc(HDR_LEN as u64);
    let mut h = guest(Op::Request, 1000, 99);
    // A header split over descriptors of 1 and 43 bytes is still a header.
    r.mem
        .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    r.send_chain(&[TestDesc::r(hdr_at, 1), TestDesc::r(hdr_at + 1, 43)]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    // Too short for a header: dropped.
    r.send_chain(&[TestDesc::r(hdr_at, 20)]);
    // Outside guest memory, and a zero-length descriptor.
    r.send_chain(&[TestDesc::r(MEM as u64 - 4, 44)]);
    r.send_chain(&[TestDesc::r(u64::MAX - 10, 44), TestDesc::r(hdr_at, 0)]);
    assert!(r.recv().is_none());
    // A writable buffer on TX: the driver is broken; dropped.
    r.send_chain(&[TestDesc::r(hdr_at, 44), TestDesc::w(hdr_at + 64, 16)]);
    assert!(r.recv().is_none());
    // len larger than what the chain holds, or than any packet.
    h.op = Op::Rw as u16;
    h.len = 100;
    r.mem
        .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    r.send_chain(&[TestDesc::r(hdr_at, 44), TestDesc::r(hdr_at, 99)]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    h.len = u32::MAX;
    r.mem
        .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    r.send_chain(&[TestDesc::r(hdr_at, 44), TestDesc::r(0, u32::MAX - 44)]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    // Someone else's source CID: dropped without an answer.
    let mut spoof = guest(Op::Request, 1000, 99);
    spoof.src_cid = 4;
    r.send(spoof, &[]);
    assert!(r.recv().is_none());
    // SEQPACKET and unknown ops: refused with RST.
    let mut seq = guest(Op::Request, 1000, 99);
    seq.type_ = 2;
    r.send(seq, &[]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    let mut bad_op = guest(Op::Request, 1000, 99);
    bad_op.op = 0;
    r.send(bad_op, &[]);
    assert_eq!(r.recv_op().op, Op::Rst as u16);
    assert!(r.metric(|m| &m.bad_packets) >= 9);

    // RX chains that cannot hold a header, or are device-readable, are returned unused.
    r.send(guest(Op::Request, 1000, 99), &[]);
    let small = r.alloc(64);
    let head = r.rx.add_chain(&[TestDesc::w(small, 20)]);
    r.dev().process_rx();
    assert_eq!(r.rx.pop_used(), Some((u32::from(head), 0)));
    let head = r.rx.add_chain(&[TestDesc::r(small, 64)]);
    r.dev().process_rx();
    assert_eq!(r.rx.pop_used(), Some((u32::from(head), 0)));
    // The packet is still there for a proper buffer, spread over three descriptors.
    let at = r.alloc(256);
    let head = r.rx.add_chain(&[
        TestDesc::w(at, 10),
        TestDesc::w(at + 10, 34),
        TestDesc::w(at + 44, 200),
    ]);
    r.dev().process_rx();
    assert_eq!(r.rx.pop_used(), Some((u32::from(head), 44)));
    let mut raw = [0u8; HDR_LEN];
    r.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
    assert_eq!(Header::parse(&raw).op, Op::Rst as u16);

    // After all that, the device still works.
    let l = listen(&r, 52);
    let _host = r.guest_connect(&l, 2000, 52);
    assert_eq!(r.dev().connection_count(), 1);
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mut r = rig();
    let l = listen(&r, 52);
    let mut req = guest(Op::Request, 1000, 52);
    req.buf_alloc = 1000;
    r.send(req, &[]);
    assert_eq!(r.recv_op().op, Op::Response as u16);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(&[9u8; 5000]).unwrap();
    r.host_events();
    let (h, data) = r.recv().unwrap();
    assert_eq!((h.op, data.len()), (Op::Rw as u16, 1000));
    // Out of credit: the device asks once, then waits.
    assert_eq!(r.recv_op().op, Op::CreditRequest as u16);
    r.host_events();
    assert!(r.recv().is_none());
    let mut upd = guest(Op::CreditUpdate, 1000, 52);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 600;
    r.send(upd, &[]);
    r.host_events();
    let (h, data) = r.recv().unwrap();
    assert_eq!((h.op, data.len()), (Op::Rw as u16, 600));
}

#[test]
fn guest_sending_past_its_credit_is_reset() {
    let mut r = rig();
    let l = listen(&r, 52);
    // The host side never reads.
    let _host = r.guest_connect(&l, 1000, 52);
    let chunk = vec![5u8; 64 << 10];
    for _ in 0..1024 {
        r.send(guest(Op::Rw, 1000, 52), &chunk);
        if let Some((h, _)) = r.recv() {
            // Credit updates are fine; an RST ends the test.
            if h.op == Op::Rst as u16 {
                assert_eq!(r.dev().connection_count(), 0);
                return;
            }
        }
    }
    panic!("a guest ignoring its credit was never reset");
}

#[test]
fn a_hundred_connections_at_once() {
    let mut r = rig();
    let l = listen(&r, 52);
    let mut hosts = Vec::new();
    for i in 0..100u32 {
        hosts.push(r.guest_connect(&l, 2000 + i, 52));
    }
    assert_eq!(r.dev().connection_count(), 100);
    for i in 0..100u32 {
        r.send(
            guest(Op::Rw, 2000 + i, 52),
            format!("conn {i:03}").as_bytes(),
        );
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let mut got = [0u8; 8];
        host.read_exact(&mut got).unwrap();
        assert_eq!(got, *format!("conn {i:03}").as_bytes());
        host.write_all(format!("back {i:03}").as_bytes()).unwrap();
    }
    let mut seen = [false; 100];
    // More ready sockets than one epoll batch: the event loop comes back while the set is
    // readable; here, until a round brings nothing.
    loop {
        r.host_events();
        let mut got = false;
        while let Some((h, data)) = r.recv() {
            let i = (h.dst_port - 2000) as usize;
            assert_eq!(data, format!("back {i:03}").as_bytes());
            assert!(!std::mem::replace(&mut seen[i], true));
            got = true;
        }
        if !got {
            break;
        }
    }
    assert!(seen.iter().all(|&s| s), "every connection answered");
    // Host-initiated ones too.
    let mut clients = Vec::new();
    for _ in 0..32 {
        let mut c = UnixStream::connect(&r.uds).unwrap();
        c.write_all(b"CONNECT 80\n").unwrap();
        clients.push(c);
    }
    r.host_events();
    r.host_events();
    let mut ports = Vec::new();
    while let Some((h, _)) = r.recv() {
        assert_eq!((h.op, h.dst_port), (Op::Request as u16, 80));
        ports.push(h.src_port);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 32, "distinct host ports");
}

#[test]
fn device_reset_closes_host_sockets() {
    let mut r = rig();
    let l = listen(&r, 52);
    let mut host = r.guest_connect(&l, 1000, 52);
    reg_w(&mut r.t, 0x70, 0);
    assert_eq!(r.dev().connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn restore_tells_the_guest_its_connections_are_gone() {
    let mut r = rig();
    // The driver keeps event buffers posted, as Linux does.
    let ev_at = r.alloc(8);
    r.mem.write_slice(&[0xaa; 8], GuestAddress(ev_at)).unwrap();
    let ev_head = r.ev.add_chain(&[TestDesc::w(ev_at, 8)]);
    r.dev().process_event_queue();
    assert_eq!(r.ev.pop_used(), None, "no event without a reason");
    let l = listen(&r, 52);
    let _host = r.guest_connect(&l, 1000, 52);

    let state = r.dev().save_state();
    let t_state = r.t.save_state();
    let dev2 = Vsock::new_shared(CID, &r.dir.join("restored.sock")).unwrap();
    dev2.lock().unwrap().restore_state(&state).unwrap();
    let mut t2 = MmioTransport::new(r.mem.clone(), dev2.clone()).unwrap();
    t2.restore_state(&t_state).unwrap();
    dev2.lock().unwrap().process_event_queue();
    assert_eq!(r.ev.pop_used(), Some((u32::from(ev_head), 4)));
    let mut id = [0u8; 8];
    r.mem.read_slice(&mut id, GuestAddress(ev_at)).unwrap();
    assert_eq!(
        id,
        [0, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa],
        "TRANSPORT_RESET (0)"
    );
    assert_eq!(
        dev2.lock()
            .unwrap()
            .metrics()
            .reset_events
            .load(Ordering::Relaxed),
        1
    );
    // Once only.
    let again = r.ev.add_chain(&[TestDesc::w(ev_at, 8)]);
    dev2.lock().unwrap().process_event_queue();
    assert_eq!(r.ev.pop_used(), None);
    let _ = again;

    // The saved CID must be the configured one.
    let other = Vsock::new_shared(CID + 1, &r.dir.join("other.sock")).unwrap();
    assert!(other.lock().unwrap().restore_state(&state).is_err());
}

#[test]
fn random_guest_packets_never_panic_and_leave_the_device_working() {
    let mut r = rig();
    let l = listen(&r, 52);
    let _host = r.guest_connect(&l, 1000, 52);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let v = next();
        // Mostly plausible headers (right CIDs, known ops, the live connection's ports) so the
        // deeper paths run, with every field sometimes garbage.
        let mut h = guest(Op::Rw, 1000, 52);
        h.op = (v % 9) as u16;
        h.len = match v >> 8 & 3 {
            0 => 0,
            1 => (next() % 200) as u32,
            2 => next() as u32,
            _ => 64 << 10,
        };
        if v >> 10 & 7 == 0 {
            h.src_cid = next();
        }
        if v >> 13 & 7 == 0 {
            h.dst_cid = next();
        }
        if v >> 16 & 7 == 0 {
            h.type_ = next() as u16;
        }
        if v >> 19 & 3 == 0 {
            h.src_port = next() as u32;
            h.dst_port = next() as u32;
        }
        h.flags = next() as u32;
        h.buf_alloc = next() as u32;
        h.fwd_cnt = next() as u32;
        let hdr_at = r.alloc(HDR_LEN as u64);
        r.mem
            .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
            .unwrap();
        let data_at = r.alloc(256);
        let chain = match v >> 21 & 3 {
            0 => vec![TestDesc::r(hdr_at, HDR_LEN as u32)],
            1 => vec![
                TestDesc::r(hdr_at, (next() % 60) as u32),
                TestDesc::r(data_at, (next() % 300) as u32),
            ],
            2 => vec![
                TestDesc::r(hdr_at, HDR_LEN as u32),
                TestDesc::r(next() % (2 * MEM as u64), next() as u32),
            ],
            _ => vec![
                TestDesc::r(hdr_at, HDR_LEN as u32),
                TestDesc::w(data_at, 200),
            ],
        };
        r.send_chain(&chain);
        r.host_events();
        while r.recv().is_some() {}
    }
    // The device still serves new connections.
    let l2 = listen(&r, 53);
    let mut host = r.guest_connect(&l2, 4242, 53);
    r.send(guest(Op::Rw, 4242, 53), b"still here");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
}
