//! Device tests over datagram socket pairs standing in for the tap: the test plays the guest
//! driver (rings in test guest memory) and the network peer (the socket's other end), and runs
//! the real event loop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::bit;
use super::{rarp_frame, Net};
use crate::net::vnet::VNET_HDR_LEN;
use crate::net::{MacAddr, NetBackend};
use crate::persist::{Persist, RestoreError};
use crate::virtio::testing::{TestDesc, TestDriver};
use crate::virtio::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::GuestMemory;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const RING: u16 = 16;
/// Guest buffers live from here on; rings below.
const BUF_BASE: u64 = 0x10_0000;

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are fresh and owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn send(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: writes from a live buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// Next datagram from `fd`, if any (non-blocking).
fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    // SAFETY: reads into a live buffer.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// A frame with vnet header: zero header, broadcast destination, `tag` repeated as payload.
fn frame(tag: u8, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[2, 0, 0, 0, 0, tag]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend(std::iter::repeat_n(tag, payload));
    f
}

struct Harness {
    mem: GuestMemory,
    net: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    /// Network side of each pair's socket.
    peers: Vec<OwnedFd>,
    /// Driver views: rx0, tx0, rx1, tx1, …, ctrl.
    drivers: Vec<TestDriver>,
    evts: Vec<Arc<EventFd>>,
    interrupt: Arc<VirtioInterrupt>,
    next_buf: u64,
}

impl Harness {
    fn new(features: u64, pairs: u16) -> Self {
        Self::with_backend(features, pairs, |_| {})
    }

    fn with_backend(features: u64, pairs: u16, tweak: impl Fn(RawFd)) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let (mut ours, mut peers) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            let (a, b) = socketpair();
            tweak(a.as_raw_fd());
            ours.push(a);
            peers.push(b);
        }
        let backend = NetBackend::from_sockets(ours, MAC).unwrap();
        let net = Net::new_shared(backend).unwrap();
        let nqueues = 2 * usize::from(pairs) + 1;
        let drivers: Vec<TestDriver> = (0..nqueues)
            .map(|i| TestDriver::new(mem.clone(), RING, 0x1000 + 0x1000 * i as u64))
            .collect();
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let evts: Vec<Arc<EventFd>> = (0..nqueues)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect();
        let queues = drivers
            .iter()
            .zip(&evts)
            .map(|(d, e)| VirtioQueue {
                queue: queue_for(d, event_idx),
                notify: e.clone(),
            })
            .collect();
        let interrupt = Arc::new(VirtioInterrupt::new().unwrap());
        {
            let mut n = net.lock().unwrap();
            n.ack_features(features);
            n.activate(mem.clone(), interrupt.clone(), queues).unwrap();
        }
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(net.clone());
        let mut h = Self {
            mem,
            net,
            em,
            peers,
            drivers,
            evts,
            interrupt,
            next_buf: BUF_BASE,
        };
        h.run();
        h
    }

    /// Runs the event loop until it goes quiet.
    fn run(&mut self) {
        for _ in 0..1000 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
        panic!("event loop never went quiet");
    }

    fn kick(&mut self, queue: usize) {
        self.evts[queue].write(1).unwrap();
        self.run();
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        at
    }

    /// Gives the device one RX buffer of `len` bytes on `queue`; returns its address.
    fn rx_buffer(&mut self, queue: usize, len: u32) -> u64 {
        let at = self.alloc(len);
        self.drivers[queue].add_chain(&[TestDesc::w(at, len)]);
        at
    }

    /// Queues `data` for TX on `queue`, split in two descriptors (header apart, as Linux does).
    fn tx_frame(&mut self, queue: usize, data: &[u8]) -> u16 {
        let at = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
        let hdr = VNET_HDR_LEN as u32;
        self.drivers[queue].add_chain(&[
            TestDesc::r(at, hdr),
            TestDesc::r(at + u64::from(hdr), data.len() as u32 - hdr),
        ])
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn metric(&self, f: impl Fn(&super::NetMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.net.lock().unwrap().metrics).load(Ordering::Relaxed)
    }
}

fn queue_for(d: &TestDriver, event_idx: bool) -> Queue {
    let mut q = Queue::new(256).unwrap();
    q.set_size(d.size);
    q.set_desc_table_address(Some(d.desc.0 as u32), Some((d.desc.0 >> 32) as u32));
    q.set_avail_ring_address(Some(d.avail.0 as u32), Some((d.avail.0 >> 32) as u32));
    q.set_used_ring_address(Some(d.used.0 as u32), Some((d.used.0 >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

const BASIC: u64 = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_CTRL_VQ);
const MRG: u64 = BASIC | bit(VIRTIO_NET_F_MRG_RXBUF);

#[test]
fn tx_frames_reach_the_backend_in_order() {
    let mut h = Harness::new(BASIC, 1);
    let frames: Vec<Vec<u8>> = (1..=3).map(|i| frame(i, 100 * usize::from(i))).collect();
    let heads: Vec<u16> = frames.clone().iter().map(|f| h.tx_frame(1, f)).collect();
    h.kick(1);
    for f in &frames {
        assert_eq!(recv(&h.peers[0]).as_ref(), Some(f));
    }
    assert_eq!(recv(&h.peers[0]), None);
    for head in heads {
        assert_eq!(h.drivers[1].pop_used(), Some((u32::from(head), 0)));
    }
    assert_eq!(h.metric(|m| &m.tx_frames), 3);
    assert_eq!(h.metric(|m| &m.tx_bytes), 600 + 3 * 14);
    assert!(
        h.interrupt.status() & 1 != 0,
        "used-buffer interrupt raised"
    );
}

#[test]
fn rx_frame_lands_with_num_buffers_one() {
    let mut h = Harness::new(BASIC, 1);
    let buf = h.rx_buffer(0, 2048);
    h.kick(0);
    let f = frame(7, 500);
    send(&h.peers[0], &f);
    h.run();
    let (_, len) = h.drivers[0].pop_used().expect("frame delivered");
    assert_eq!(len as usize, f.len());
    let got = h.read(buf, f.len());
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(h.metric(|m| &m.rx_frames), 1);
}

#[test]
fn rx_writes_are_marked_dirty() {
    let mut h = Harness::new(BASIC, 1);
    let buf = h.rx_buffer(0, 2048);
    h.kick(0);
    let region = h.mem.find_region(GuestAddress(buf)).unwrap();
    let before = region.bitmap().dirty_at(buf as usize);
    send(&h.peers[0], &frame(1, 64));
    h.run();
    assert!(h.drivers[0].pop_used().is_some());
    let region = h.mem.find_region(GuestAddress(buf)).unwrap();
    assert!(
        region.bitmap().dirty_at(buf as usize),
        "dirty before={before}"
    );
}

#[test]
fn mrg_rxbuf_spreads_a_frame_over_buffers() {
    let mut h = Harness::new(MRG, 1);
    let bufs: Vec<u64> = (0..6).map(|_| h.rx_buffer(0, 1536)).collect();
    h.kick(0);
    let f = frame(9, 5000 - VNET_HDR_LEN - 14);
    assert_eq!(f.len(), 5000);
    send(&h.peers[0], &f);
    h.run();
    let mut got = Vec::new();
    let mut lens = Vec::new();
    while let Some((_, len)) = h.drivers[0].pop_used() {
        lens.push(len);
    }
    assert_eq!(lens, vec![1536, 1536, 1536, 392]);
    for (b, l) in bufs.iter().zip(&lens) {
        got.extend(h.read(*b, *l as usize));
    }
    assert_eq!(&got[10..12], &4u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    // Two buffers stay for the next frame.
    let f2 = frame(3, 100);
    send(&h.peers[0], &f2);
    h.run();
    let (_, len) = h.drivers[0].pop_used().unwrap();
    assert_eq!(len as usize, f2.len());
    assert_eq!(&h.read(bufs[4], 12)[10..12], &1u16.to_le_bytes());
}

/// The guest runs out of buffers mid-stream and in the middle of a multi-buffer frame: frames
/// wait (the backend is no longer polled) and arrive complete, once, in order.
#[test]
fn rx_back_pressure_loses_and_duplicates_nothing() {
    let mut h = Harness::new(MRG, 1);
    let mut bufs = vec![h.rx_buffer(0, 1536), h.rx_buffer(0, 1536)];
    h.kick(0);
    let frames: Vec<Vec<u8>> = vec![frame(1, 200), frame(2, 3000), frame(3, 300), frame(4, 400)];
    for f in &frames {
        send(&h.peers[0], f);
    }
    h.run();
    // Frame 1 took one buffer; frame 2 needs two and only one is left: nothing of it shows.
    let first = h.drivers[0].pop_used().unwrap();
    assert_eq!(first.1 as usize, frames[0].len());
    assert_eq!(h.drivers[0].pop_used(), None);
    {
        let n = h.net.lock().unwrap();
        assert!(n.pairs[0].rx_stalled);
        assert_eq!(
            n.pairs[0].interest,
            Some(event_manager::EventSet::empty()),
            "stopped polling the backend"
        );
    }
    // More buffers, one at a time with kicks: everything arrives exactly once.
    for _ in 0..6 {
        bufs.push(h.rx_buffer(0, 1536));
        h.kick(0);
    }
    let mut seen = Vec::new();
    let mut i = 1;
    while let Some((_, len)) = h.drivers[0].pop_used() {
        let hdr = h.read(bufs[i], 12);
        let nb = u16::from_le_bytes([hdr[10], hdr[11]]) as usize;
        let mut data = h.read(bufs[i], len as usize);
        for _ in 1..nb {
            i += 1;
            let (_, l) = h.drivers[0].pop_used().expect("rest of a merged frame");
            data.extend(h.read(bufs[i], l as usize));
        }
        i += 1;
        seen.push(data[23]); // last byte of the source MAC is the frame's tag
        let want = &frames[usize::from(data[23]) - 1];
        assert_eq!(&data[VNET_HDR_LEN..], &want[VNET_HDR_LEN..]);
    }
    assert_eq!(seen, vec![2, 3, 4]);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
    assert_eq!(h.metric(|m| &m.rx_frames), 4);
    assert!(!h.net.lock().unwrap().pairs[0].rx_stalled);
}

#[test]
fn rx_frame_too_big_for_one_buffer_is_dropped_without_mrg() {
    let mut h = Harness::new(BASIC, 1);
    h.rx_buffer(0, 256);
    h.kick(0);
    send(&h.peers[0], &frame(1, 1000));
    send(&h.peers[0], &frame(2, 100));
    h.run();
    // The big frame is dropped; the buffer is kept for the small one.
    let (_, len) = h.drivers[0].pop_used().unwrap();
    assert_eq!(len as usize, frame(2, 100).len());
    assert_eq!(h.drivers[0].pop_used(), None);
    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
}

#[test]
fn bad_rx_chains_are_returned_and_counted() {
    let mut h = Harness::new(MRG, 1);
    // Readable descriptor in an RX chain, then a buffer outside guest memory, then a good one.
    let a = h.alloc(1536);
    let r1 = h.drivers[0].add_chain(&[TestDesc::r(a, 1536)]);
    let r2 = h.drivers[0].add_chain(&[TestDesc::w(u64::MAX - 100, 1536)]);
    let good = h.rx_buffer(0, 1536);
    h.kick(0);
    let f1 = frame(1, 100);
    let f2 = frame(2, 100);
    send(&h.peers[0], &f1);
    send(&h.peers[0], &f2);
    h.run();
    // The bad chains come back empty; the first frame lands in the good buffer, the second
    // waits for another buffer.
    assert_eq!(h.drivers[0].pop_used(), Some((u32::from(r1), 0)));
    assert_eq!(h.drivers[0].pop_used(), Some((u32::from(r2), 0)));
    let (_, len) = h.drivers[0].pop_used().unwrap();
    assert_eq!(len as usize, f1.len());
    assert_eq!(h.drivers[0].pop_used(), None);
    assert_eq!(h.read(good + 23, 1), vec![1]);
    assert_eq!(h.metric(|m| &m.bad_chains), 2);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
    // A bad chain in the middle of a multi-buffer frame drops that frame only.
    let g1 = h.rx_buffer(0, 64);
    let bad = h.drivers[0].add_chain(&[TestDesc::r(g1, 64)]);
    h.kick(0);
    let mut ids = Vec::new();
    while let Some((id, len)) = h.drivers[0].pop_used() {
        ids.push((id, len));
    }
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[1], (u32::from(bad), 0));
    assert_eq!(
        ids[0].1, 0,
        "the good chain taken for the frame comes back empty"
    );
    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
    assert_eq!(h.metric(|m| &m.bad_chains), 3);
}

#[test]
fn bad_tx_chains_are_dropped_and_counted() {
    let mut h = Harness::new(BASIC, 1);
    let a = h.alloc(256);
    // Writable descriptor, out-of-memory buffer, too short to hold a header, huge length.
    h.drivers[1].add_chain(&[TestDesc::w(a, 100)]);
    h.drivers[1].add_chain(&[TestDesc::r(1 << 40, 100)]);
    h.drivers[1].add_chain(&[TestDesc::r(a, 8)]);
    h.drivers[1].add_chain(&[TestDesc::r(a, u32::MAX)]);
    // A header asking for TSO, which was not negotiated.
    let mut tso = frame(5, 100);
    tso[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    h.tx_frame(1, &tso);
    let ok = frame(6, 60);
    h.tx_frame(1, &ok);
    h.kick(1);
    assert_eq!(recv(&h.peers[0]), Some(ok));
    assert_eq!(recv(&h.peers[0]), None);
    let mut n = 0;
    while h.drivers[1].pop_used().is_some() {
        n += 1;
    }
    assert_eq!(n, 6, "every chain is returned");
    assert_eq!(h.metric(|m| &m.bad_chains), 4);
    assert_eq!(h.metric(|m| &m.tx_dropped), 5);
    assert_eq!(h.metric(|m| &m.tx_frames), 1);
}

/// The backend fills up (EAGAIN): the device keeps the chain, waits for EPOLLOUT, and sends
/// everything once the peer drains, in order.
#[test]
fn tx_waits_for_a_full_backend_without_losing_frames() {
    // A tiny send buffer makes the device's socket full after a few frames.
    let mut h = Harness::with_backend(BASIC, 1, |fd| {
        let size: libc::c_int = 4096;
        // SAFETY: sets one int socket option on a live socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(r, 0);
    });
    // Two descriptors per frame: a 16-entry ring holds 8.
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(i, 1000)).collect();
    for f in &frames {
        h.tx_frame(1, f);
    }
    h.kick(1);
    {
        let n = h.net.lock().unwrap();
        assert!(
            n.pairs[0].tx_blocked,
            "unix datagram queue holds 10 at most"
        );
        assert!(n.pairs[0]
            .interest
            .unwrap()
            .contains(event_manager::EventSet::OUT));
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        while let Some(f) = recv(&h.peers[0]) {
            got.push(f);
        }
        h.run();
    }
    let tags: Vec<u8> = got.iter().map(|f| f[23]).collect();
    assert_eq!(tags, (0..8).collect::<Vec<u8>>());
    assert!(got == frames, "frame contents differ");
    let mut used = 0;
    while h.drivers[1].pop_used().is_some() {
        used += 1;
    }
    assert_eq!(used, 8);
    assert!(!h.net.lock().unwrap().pairs[0].tx_blocked);
}

/// Writes a control command chain; returns the ack address.
fn ctrl_cmd(h: &mut Harness, queue: usize, class: u32, cmd: u32, data: &[u8]) -> u64 {
    let at = h.alloc(64);
    let mut bytes = vec![class as u8, cmd as u8];
    bytes.extend_from_slice(data);
    h.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    h.mem.write_obj(0xaau8, GuestAddress(at + 32)).unwrap();
    h.drivers[queue].add_chain(&[
        TestDesc::r(at, 2),
        TestDesc::r(at + 2, data.len() as u32),
        TestDesc::w(at + 32, 1),
    ]);
    h.kick(queue);
    at + 32
}

#[test]
fn control_queue_sets_queue_pairs() {
    let feats = BASIC | bit(VIRTIO_NET_F_MQ);
    let mut h = Harness::new(feats, 2);
    // Pair 1 is off until the driver enables it.
    let b1 = h.rx_buffer(2, 2048);
    h.kick(2);
    send(&h.peers[1], &frame(8, 80));
    h.run();
    assert_eq!(h.drivers[2].pop_used(), None);
    let ack = ctrl_cmd(
        &mut h,
        4,
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &2u16.to_le_bytes(),
    );
    assert_eq!(h.read(ack, 1), vec![VIRTIO_NET_OK as u8]);
    assert_eq!(h.drivers[4].pop_used().map(|u| u.1), Some(1));
    let (_, len) = h.drivers[2]
        .pop_used()
        .expect("pair 1 delivers after PAIRS_SET 2");
    assert_eq!(len as usize, frame(8, 80).len());
    assert_eq!(h.read(b1 + 23, 1), vec![8]);
    for bad in [0u16, 3] {
        let ack = ctrl_cmd(
            &mut h,
            4,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &bad.to_le_bytes(),
        );
        assert_eq!(h.read(ack, 1), vec![VIRTIO_NET_ERR as u8], "{bad} pairs");
    }
    let ack = ctrl_cmd(
        &mut h,
        4,
        VIRTIO_NET_CTRL_RX,
        VIRTIO_NET_CTRL_RX_PROMISC,
        &[1],
    );
    assert_eq!(h.read(ack, 1), vec![VIRTIO_NET_ERR as u8]);
    assert_eq!(h.net.lock().unwrap().save_state().curr_pairs, 2);
}

#[test]
fn mq_command_refused_without_mq() {
    let mut h = Harness::new(BASIC, 1);
    let ack = ctrl_cmd(
        &mut h,
        2,
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &1u16.to_le_bytes(),
    );
    assert_eq!(h.read(ack, 1), vec![VIRTIO_NET_ERR as u8]);
}

#[test]
fn announce_sets_status_interrupts_and_sends_rarp() {
    let feats = BASIC | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);
    let mut h = Harness::new(feats, 1);
    let gen = h.interrupt.config_generation();
    h.net.lock().unwrap().announce().unwrap();
    let mut cfg = [0u8; 2];
    h.net.lock().unwrap().read_config(6, &mut cfg);
    assert_eq!(
        u16::from_le_bytes(cfg),
        (VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE) as u16
    );
    assert_eq!(h.interrupt.config_generation(), gen + 1);
    assert!(h.interrupt.status() & 2 != 0, "config interrupt");
    let rarp = recv(&h.peers[0]).expect("RARP on the backend");
    assert_eq!(rarp, rarp_frame(MAC).to_vec());
    assert_eq!(&rarp[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &MAC.0);
    assert_eq!(&rarp[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14], &[0x80, 0x35]);
    let ack = ctrl_cmd(
        &mut h,
        2,
        VIRTIO_NET_CTRL_ANNOUNCE,
        VIRTIO_NET_CTRL_ANNOUNCE_ACK,
        &[],
    );
    assert_eq!(h.read(ack, 1), vec![VIRTIO_NET_OK as u8]);
    h.net.lock().unwrap().read_config(6, &mut cfg);
    assert_eq!(u16::from_le_bytes(cfg), VIRTIO_NET_S_LINK_UP as u16);
}

#[test]
fn announce_without_guest_support_only_sends_rarp() {
    let h = Harness::new(BASIC, 1);
    let gen = h.interrupt.config_generation();
    h.net.lock().unwrap().announce().unwrap();
    assert_eq!(h.interrupt.config_generation(), gen);
    assert!(recv(&h.peers[0]).is_some());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let feats = BASIC | bit(VIRTIO_RING_F_EVENT_IDX);
    let mut h = Harness::new(feats, 1);
    // The driver wants an interrupt only after the 3rd used entry (used_event = 2).
    h.drivers[1].set_used_event(2);
    h.interrupt.ack(h.interrupt.status());
    let f = frame(1, 60);
    h.tx_frame(1, &f);
    h.kick(1);
    assert_eq!(
        h.interrupt.status() & 1,
        0,
        "no interrupt for the 1st frame"
    );
    h.tx_frame(1, &f);
    h.tx_frame(1, &f);
    h.kick(1);
    assert_eq!(
        h.interrupt.status() & 1,
        1,
        "interrupt once used passes used_event"
    );
}

#[test]
fn features_are_mirrored_as_tap_offloads_and_reset_clears() {
    let feats = MRG | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    let h = Harness::new(feats, 1);
    let mut n = h.net.lock().unwrap();
    assert_eq!(n.acked_features, feats);
    n.reset();
    assert_eq!(n.acked_features, 0);
    assert!(n.active.is_none());
    assert!(n.queue_states().is_empty());
}

#[test]
fn save_restore_round_trip_and_mac_check() {
    let feats = BASIC | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);
    let h = Harness::new(feats, 1);
    let state = h.net.lock().unwrap().save_state();
    assert_eq!(state.mac, MAC.0);
    assert_eq!(state.acked_features, feats);

    let (a, _b) = socketpair();
    let mut other = Net::new(NetBackend::from_sockets(vec![a], MAC).unwrap()).unwrap();
    other.restore_state(&state).unwrap();
    assert_eq!(other.acked_features, feats);
    assert_eq!(other.restored_pairs, Some(1));

    let (a, _b) = socketpair();
    let mut wrong =
        Net::new(NetBackend::from_sockets(vec![a], MacAddr([2, 0, 0, 0, 0, 1])).unwrap()).unwrap();
    let e = wrong.restore_state(&state).unwrap_err();
    assert!(matches!(e, RestoreError::Invalid { .. }));
    assert!(e.to_string().contains("52:54:00:12:34:56"), "{e}");
}

#[test]
fn transport_sees_a_net_device() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::MmioTransport;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (a, _b) = socketpair();
    let net = Net::new_shared(NetBackend::from_sockets(vec![a], MAC).unwrap()).unwrap();
    let mut t = MmioTransport::new(mem, net).unwrap();
    let mut b = [0u8; 4];
    t.read(0x08, &mut b);
    assert_eq!(u32::from_le_bytes(b), 1, "device id");
    t.read(0x34, &mut b);
    assert_eq!(t.queue_notify_evts().len(), 3);
    let mut mac = [0u8; 6];
    t.read(0x100, &mut mac);
    assert_eq!(mac, MAC.0);
}

#[test]
fn activation_needs_the_first_pair() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (a, _b) = socketpair();
    let mut net = Net::new(NetBackend::from_sockets(vec![a], MAC).unwrap()).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new().unwrap());
    let queues = (0..3)
        .map(|_| VirtioQueue {
            queue: Queue::new(256).unwrap(),
            notify: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        })
        .collect();
    assert!(net
        .activate(mem.clone(), interrupt.clone(), queues)
        .is_err());
    assert!(net.activate(mem, interrupt, Vec::new()).is_err());
}

#[allow(dead_code)]
fn net_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Net>();
}

/// A driver publishing an avail index more than a ring ahead: the device gives up on the queue
/// (DEVICE_NEEDS_RESET) instead of spinning, for RX and TX alike.
#[test]
fn avail_index_beyond_the_ring_breaks_the_device_not_the_thread() {
    for queue in [0usize, 1] {
        let mut h = Harness::new(BASIC, 1);
        let avail_idx = GuestAddress(h.drivers[queue].avail.0 + 2);
        h.mem.write_obj(100u16.to_le(), avail_idx).unwrap();
        send(&h.peers[0], &frame(1, 64));
        h.kick(queue);
        assert!(h.interrupt.needs_reset(), "queue {queue}");
        assert!(h.net.lock().unwrap().active.as_ref().unwrap().broken);
    }
}

fn limit(
    bandwidth: Option<(u64, u64)>,
    ops: Option<(u64, u64)>,
) -> crate::rate_limiter::RateLimiterConfig {
    let bucket = |b: Option<(u64, u64)>| {
        b.map(
            |(size, refill_time_ms)| crate::rate_limiter::TokenBucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms,
            },
        )
    };
    crate::rate_limiter::RateLimiterConfig {
        bandwidth: bucket(bandwidth),
        ops: bucket(ops),
    }
}

impl Harness {
    /// Runs the event loop until `done` holds, for at most `rounds` waits of 100 ms (bounded by
    /// events, not by time: the limiter's timer is one of them).
    fn run_until(&mut self, rounds: usize, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..rounds {
            if done(self) {
                return true;
            }
            self.em.run_with_timeout(100).unwrap();
        }
        done(self)
    }
}

#[test]
fn tx_rate_limit_holds_frames_and_sends_them_all_in_order() {
    let mut h = Harness::new(BASIC, 1);
    // 1000 bytes per 20 ms; frames of 514 bytes (without the vnet header): one per refill.
    h.net
        .lock()
        .unwrap()
        .set_rate_limiters(None, Some(&limit(Some((1000, 20)), None)));
    let frames: Vec<Vec<u8>> = (1..=6).map(|i| frame(i, 500)).collect();
    for f in &frames {
        h.tx_frame(1, f);
    }
    h.evts[1].write(1).unwrap();
    let mut got = Vec::new();
    let all = h.run_until(500, |h| {
        while let Some(f) = recv(&h.peers[0]) {
            got.push(f);
        }
        got.len() == frames.len()
    });
    assert!(all, "got {} frames", got.len());
    assert_eq!(got, frames, "every frame once, in order");
    assert!(h.metric(|m| &m.tx_throttled) >= 1);
    assert_eq!(h.metric(|m| &m.tx_dropped), 0);
    let mut used = 0;
    while h.drivers[1].pop_used().is_some() {
        used += 1;
    }
    assert_eq!(used, 6);
}

#[test]
fn rx_rate_limit_makes_frames_wait_not_drop() {
    let mut h = Harness::new(BASIC, 1);
    // One frame per 20 ms.
    h.net
        .lock()
        .unwrap()
        .set_rate_limiters(Some(&limit(None, Some((1, 20)))), None);
    let bufs: Vec<u64> = (0..5).map(|_| h.rx_buffer(0, 2048)).collect();
    h.kick(0);
    for tag in 1..=5 {
        send(&h.peers[0], &frame(tag, 300));
    }
    let mut used = Vec::new();
    let all = h.run_until(500, |h| {
        while let Some(u) = h.drivers[0].pop_used() {
            used.push(u);
        }
        used.len() == 5
    });
    assert!(all, "got {} frames", used.len());
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(h.read(*b, 24)[23], i as u8 + 1, "frame {i} in order");
    }
    assert!(h.metric(|m| &m.rx_throttled) >= 1);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
    // Removing the limit: the next frames go straight through.
    h.net.lock().unwrap().set_rate_limiters(
        Some(&crate::rate_limiter::RateLimiterConfig::default()),
        None,
    );
    let throttled = h.metric(|m| &m.rx_throttled);
    for _ in 0..3 {
        h.rx_buffer(0, 2048);
    }
    h.kick(0);
    for tag in 6..=8 {
        send(&h.peers[0], &frame(tag, 300));
    }
    let mut n = 0;
    assert!(h.run_until(100, |h| {
        while h.drivers[0].pop_used().is_some() {
            n += 1;
        }
        n == 3
    }));
    assert_eq!(h.metric(|m| &m.rx_throttled), throttled);
    let state = h.net.lock().unwrap().save_state();
    assert_eq!(state.rx_rate_limiter, Default::default());
}
