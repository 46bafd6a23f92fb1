//! `net`: drives the first virtio-net device (VERSION_1 + MAC, 12-byte virtio_net_hdr, polled):
//! resolves `probe.net_peer` with ARP, sends `probe.net_count` ICMP echo requests, counts the
//! replies, and answers ARP and ICMP echo requests for `probe.net_ip` throughout and for
//! `probe.net_linger_ms` afterwards — or, with `probe.net_answer=N`, until it has answered N echo
//! requests (the linger time then only bounds the wait), so a harness pinging the guest never
//! races the guest's clock.

use super::virtio::{Device, Queue, QueueMem, CONFIG};
use super::{tsc, Global, State};
use ferry_probe::fmt::LineBuf;
use ferry_probe::net::{self, Ipv4Addrs, Packet};
use ferry_probe::virtq::VIRTQ_DESC_F_WRITE;

const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_MTU: config `mtu` (le16 at offset 10) is the MTU to use.
const F_MTU: u64 = 1 << 3;
/// virtio_net_hdr size with VIRTIO_F_VERSION_1.
const HDR: usize = 12;
const BUF: usize = 2048;
const NBUF: usize = super::virtio::QUEUE_SIZE as usize;
/// Echo identifier of the probe's pings ("PR").
const PING_ID: u16 = 0x5052;
const PING_PAYLOAD: &[u8; 32] = b"ferry-probe icmp echo payload...";
const ARP_RETRY_MS: u64 = 500;
/// Longest wait for the device to take the last queued frames before the test ends.
const TX_DRAIN_MS: u64 = 5000;
const ARP_TRIES: u32 = 6;
const PING_INTERVAL_MS: u64 = 200;
const REPLY_WAIT_MS: u64 = 1000;
/// MAC used when the device does not offer VIRTIO_NET_F_MAC.
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[repr(C, align(4096))]
struct Bufs {
    rx: [[u8; BUF]; NBUF],
    tx: [[u8; BUF]; NBUF],
}

static BUFS: Global<Bufs> = Global::new(Bufs {
    rx: [[0; BUF]; NBUF],
    tx: [[0; BUF]; NBUF],
});
static RXQ: Global<QueueMem> = Global::new(QueueMem([0; 4096]));
static TXQ: Global<QueueMem> = Global::new(QueueMem([0; 4096]));

fn rx_buf(i: usize) -> *mut u8 {
    // SAFETY: in-bounds place projection on a static.
    unsafe { core::ptr::addr_of_mut!((*BUFS.ptr()).rx[i % NBUF]).cast() }
}

fn tx_buf(i: usize) -> *mut u8 {
    // SAFETY: as above.
    unsafe { core::ptr::addr_of_mut!((*BUFS.ptr()).tx[i % NBUF]).cast() }
}

struct Nic {
    rx: Queue,
    tx: Queue,
    tx_next: u16,
    tx_inflight: u16,
    mac: [u8; 6],
    /// The device's MTU, when it offered VIRTIO_NET_F_MTU.
    mtu: Option<u16>,
    ip: [u8; 4],
    peer_ip: [u8; 4],
    peer_mac: Option<[u8; 6]>,
    count: u32,
    received: u32,
    /// Echo requests answered.
    answered: u32,
    seen: [u64; 4],
}

/// Runs the test.
pub fn run(st: &State) {
    let cfg = &st.cfg;
    let (Some((ip, _prefix)), Some(peer_ip)) = (cfg.net_ip, cfg.net_peer) else {
        super::fail_str("probe.net_ip and probe.net_peer required");
        return;
    };
    let Some(dev) = cfg
        .virtio()
        .iter()
        .find_map(|d| Device::probe(d).filter(|(_, id)| *id == 1))
    else {
        super::fail_str("no virtio-net device");
        return;
    };
    let d = dev.0;
    let result = setup(&d, ip, peer_ip, cfg.net_count).map(|mut nic| {
        let sent = nic.exchange(cfg.net_count);
        nic.linger(cfg.net_linger_ms, cfg.net_answer);
        // Replies still on the TX ring would be lost when the device is reset below.
        nic.drain_tx(TX_DRAIN_MS);
        (nic, sent)
    });
    d.reset();
    let mut l = LineBuf::new();
    match result {
        Ok((nic, Some(sent))) => {
            l.str("sent=")
                .dec(u64::from(sent))
                .str(" received=")
                .dec(u64::from(nic.received))
                .str(" answered=")
                .dec(u64::from(nic.answered));
            l.str(" mac=").mac(&nic.mac);
            if let Some(mtu) = nic.mtu {
                l.str(" mtu=").dec(u64::from(mtu));
            }
            let answered_enough = cfg.net_answer.is_none_or(|want| nic.answered >= want);
            if sent == cfg.net_count && nic.received == sent && answered_enough {
                super::pass(&l);
            } else {
                super::fail(&l);
            }
        }
        Ok((nic, None)) => {
            l.str("arp timeout mac=").mac(&nic.mac);
            super::fail(&l);
        }
        Err(e) => super::fail_str(e),
    }
}

fn setup(d: &Device, ip: [u8; 4], peer_ip: [u8; 4], count: u32) -> Result<Nic, &'static str> {
    let feats = d.negotiate(F_MAC | F_MTU)?;
    let mtu = (feats & F_MTU != 0).then(|| (d.read(CONFIG + 8) >> 16) as u16);
    let mac = if feats & F_MAC != 0 {
        let (lo, hi) = (
            d.read(CONFIG).to_le_bytes(),
            d.read(CONFIG + 4).to_le_bytes(),
        );
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]]
    } else {
        DEFAULT_MAC
    };
    // SAFETY: the queue pages are used by this test only, one device at a time.
    let mut rx = d.queue(0, unsafe { &mut *RXQ.ptr() })?;
    // SAFETY: as above.
    let tx = d.queue(1, unsafe { &mut *TXQ.ptr() })?;
    for i in 0..rx.size() {
        rx.set_desc(
            i,
            rx_buf(usize::from(i)) as u64,
            BUF as u32,
            VIRTQ_DESC_F_WRITE,
            0,
        );
        rx.push(i);
    }
    d.driver_ok();
    rx.notify();
    Ok(Nic {
        rx,
        tx,
        tx_next: 0,
        tx_inflight: 0,
        mac,
        mtu,
        ip,
        peer_ip,
        peer_mac: None,
        count,
        received: 0,
        answered: 0,
        seen: [0; 4],
    })
}

impl Nic {
    /// Queues one frame built by `build` (returns its length; 0 = nothing to send).
    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) {
        while self.tx.pop_used().is_some() {
            self.tx_inflight = self.tx_inflight.saturating_sub(1);
        }
        if self.tx_inflight >= self.tx.size() {
            return; // ring full: drop, like a NIC would
        }
        let i = self.tx_next % self.tx.size();
        // SAFETY: descriptor/buffer `i` is not in flight (fewer than size outstanding and
        // buffers are used round-robin).
        let buf = unsafe { core::slice::from_raw_parts_mut(tx_buf(usize::from(i)), BUF) };
        buf[..HDR + 60].fill(0);
        let n = build(&mut buf[HDR..]);
        if n == 0 {
            return;
        }
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_inflight += 1;
        self.tx
            .set_desc(i, buf.as_ptr() as u64, (HDR + n.max(60)) as u32, 0, 0);
        self.tx.push(i);
        self.tx.notify();
    }

    /// Handles every received frame; re-posts the buffers.
    fn poll(&mut self) {
        let mut reposted = false;
        while let Some((id, len)) = self.rx.pop_used() {
            let len = (len as usize).min(BUF);
            if len > HDR {
                // SAFETY: the device finished writing buffer `id`; it is re-posted only below.
                let frame = unsafe {
                    core::slice::from_raw_parts(rx_buf(usize::from(id)).add(HDR), len - HDR)
                };
                self.handle(frame);
            }
            self.rx.push(id);
            reposted = true;
        }
        if reposted {
            self.rx.notify();
        }
    }

    fn handle(&mut self, frame: &[u8]) {
        let (mac, ip) = (self.mac, self.ip);
        match net::parse(frame) {
            Packet::Arp { op, sha, spa, tpa } => {
                if spa == self.peer_ip {
                    self.peer_mac = Some(sha);
                }
                if op == net::ARP_REQUEST && tpa == ip {
                    self.send(|b| net::build_arp(b, net::ARP_REPLY, &mac, &ip, &sha, &spa));
                }
            }
            Packet::IcmpEcho {
                kind: net::ICMP_ECHO_REQUEST,
                src_mac,
                src_ip,
                dst_ip,
                id,
                seq,
                payload,
            } if dst_ip == ip => {
                let a = Ipv4Addrs {
                    src_mac: mac,
                    dst_mac: src_mac,
                    src_ip: ip,
                    dst_ip: src_ip,
                };
                self.send(|b| net::build_icmp_echo(b, &a, net::ICMP_ECHO_REPLY, id, seq, payload));
                self.answered = self.answered.saturating_add(1);
            }
            Packet::IcmpEcho {
                kind: net::ICMP_ECHO_REPLY,
                src_ip,
                id: PING_ID,
                seq,
                ..
            } if src_ip == self.peer_ip => {
                let s = u32::from(seq);
                if s >= 1 && s <= self.count {
                    let (w, b) = (((s - 1) / 64 % 4) as usize, (s - 1) % 64);
                    if s > 256 || self.seen[w] & (1 << b) == 0 {
                        if s <= 256 {
                            self.seen[w] |= 1 << b;
                        }
                        self.received += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Polls until `done` holds or `ms` elapse.
    /// Waits until the device has taken every frame queued for transmission (or `ms` passed).
    fn drain_tx(&mut self, ms: u64) {
        let deadline = tsc::deadline_ms(ms);
        while self.tx_inflight > 0 && !tsc::expired(deadline) {
            while self.tx.pop_used().is_some() {
                self.tx_inflight = self.tx_inflight.saturating_sub(1);
            }
        }
    }

    fn poll_for(&mut self, ms: u64, done: impl Fn(&Nic) -> bool) {
        let deadline = tsc::deadline_ms(ms);
        while !done(self) && !tsc::expired(deadline) {
            self.poll();
        }
    }

    /// ARP-resolves the peer, then pings it `count` times. Returns the number sent, or `None`
    /// when the peer never answered ARP.
    fn exchange(&mut self, count: u32) -> Option<u32> {
        let (mac, ip, peer_ip) = (self.mac, self.ip, self.peer_ip);
        for _ in 0..ARP_TRIES {
            self.send(|b| net::build_arp(b, net::ARP_REQUEST, &mac, &ip, &[0; 6], &peer_ip));
            self.poll_for(ARP_RETRY_MS, |n| n.peer_mac.is_some());
            if self.peer_mac.is_some() {
                break;
            }
        }
        let peer_mac = self.peer_mac?;
        let a = Ipv4Addrs {
            src_mac: mac,
            dst_mac: peer_mac,
            src_ip: ip,
            dst_ip: peer_ip,
        };
        for seq in 1..=count {
            let s = seq as u16;
            self.send(|b| {
                net::build_icmp_echo(b, &a, net::ICMP_ECHO_REQUEST, PING_ID, s, PING_PAYLOAD)
            });
            self.poll_for(PING_INTERVAL_MS, |n| n.received >= seq);
        }
        self.poll_for(REPLY_WAIT_MS, |n| n.received >= count);
        Some(count)
    }

    /// Keeps answering ARP and echo requests for `ms` milliseconds, or until `answers` echo
    /// requests were answered in all when that is given.
    fn linger(&mut self, ms: u64, answers: Option<u32>) {
        match answers {
            Some(want) => self.poll_for(ms, |n| n.answered >= want),
            None => self.poll_for(ms, |_| false),
        };
    }
}
