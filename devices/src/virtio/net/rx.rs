//! Receive: backend → guest.
//!
//! A frame is read from the backend fd into the pair's host buffer (one copy, so a frame is
//! never lost when the guest is short of buffers), then copied into as many guest chains as it
//! needs: one without MRG_RXBUF, several with it (`num_buffers` in the header says how many;
//! their used entries are consecutive, as the driver expects).
//!
//! Back-pressure: when the guest has no buffer (or not enough for the frame), every chain taken
//! for the frame is put back (`next_avail` rewound), the frame stays in the host buffer, the
//! pair stops reading the backend (the event loop drops EPOLLIN) and waits for the next RX
//! kick. No frame is lost or duplicated. Writes go through vm-memory, which marks the pages in
//! the dirty bitmap for live migration.
//!
//! Rate limiting: a frame read from the backend takes one op and its length (without the vnet
//! header) from the RX limiter before it is delivered. Refused, it waits in the host buffer,
//! the backend is not read (no EPOLLIN) until the limiter's timer, and the host queue holds
//! what arrives meanwhile (the kernel drops only when that queue overflows, as a congested
//! link would).

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::config::has;
use super::{
    admit_frame, avail_overrun, notify_guest, Active, Net, NetMetrics, Seg, ETH_HLEN,
    MAX_CHAIN_DESCS,
};
use crate::net::vnet::{fix_rx_header, VNET_HDR_LEN};
use crate::GuestMemory;

/// Frames handled (delivered or dropped) per pass before other events get a turn (the fd stays
/// watched, so the loop comes back).
const RX_BATCH: usize = 256;

enum Delivery {
    Delivered,
    /// Not given to the guest.
    Dropped,
    /// The guest has too few buffers; the frame waits. `seen` is the avail index up to
    /// which chains were looked at (and put back).
    NoBuffers {
        seen: u16,
    },
}

impl Net {
    /// Moves frames from the backend of pair `p` into the guest until the backend is empty,
    /// the guest is out of buffers, or a batch is done. Interrupts the guest if it wants.
    pub(super) fn process_rx(&mut self, a: &mut Active, p: usize) {
        let qi = 2 * p;
        if !a.serves(qi) {
            return;
        }
        let Some(fd) = self.backend.fd(p) else {
            return;
        };
        let mut used = false;
        let mut frames = 0;
        self.pairs[p].rx_stalled = false;
        loop {
            if self.pairs[p].rx_len == 0 {
                if frames >= RX_BATCH {
                    break;
                }
                let buf = &mut self.pairs[p].rx_buf;
                // SAFETY: reads at most buf.len() bytes into the pair's own buffer.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::Interrupted => continue,
                        std::io::ErrorKind::WouldBlock => {}
                        _ => log::warn!("virtio-net: backend read failed: {e}"),
                    }
                    break;
                }
                let n = n as usize;
                if n < VNET_HDR_LEN + ETH_HLEN {
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    continue;
                }
                self.pairs[p].rx_len = n;
                self.pairs[p].rx_admitted = false;
            }
            if !self.rx_limiter.is_unlimited() && !self.pairs[p].rx_admitted {
                let bytes = self.pairs[p].rx_len - VNET_HDR_LEN;
                if !admit_frame(&mut self.rx_limiter, bytes, &self.metrics.rx_throttled) {
                    // The frame waits in the host buffer for the limiter's timer.
                    break;
                }
                self.pairs[p].rx_admitted = true;
            }
            match self.deliver(a, p, &mut used) {
                // Dropped frames count too: a flood of undeliverable frames must not keep
                // the device thread here forever.
                Delivery::Delivered | Delivery::Dropped => frames += 1,
                Delivery::NoBuffers { seen } => {
                    // Ask for a kick when the driver adds past what we saw (avail_event is
                    // taken from next_avail, so point it there for the call), and look again
                    // if buffers arrived meanwhile.
                    let q = &mut a.queues[qi];
                    let start = q.next_avail();
                    q.set_next_avail(seen);
                    let more = q.enable_notification(&a.mem);
                    q.set_next_avail(start);
                    match more {
                        Ok(true) if avail_overrun(q, &a.mem) => {
                            Net::break_device(a, "RX avail index is beyond the ring")
                        }
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(_) => Net::break_device(a, "cannot access the RX avail ring"),
                    }
                    self.pairs[p].rx_stalled = true;
                    break;
                }
            }
            if a.broken {
                break;
            }
        }
        if used {
            notify_guest(&mut a.queues[qi], &a.mem, &a.interrupt);
        }
    }

    /// Copies the frame waiting in pair `p`'s buffer into guest RX chains. Sets `used` when it
    /// added used entries (the frame's, or malformed chains returned empty).
    fn deliver(&mut self, a: &mut Active, p: usize, used: &mut bool) -> Delivery {
        let features = self.acked_features;
        let mrg = has(features, VIRTIO_NET_F_MRG_RXBUF);
        let pair = &mut self.pairs[p];
        let len = pair.rx_len;
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr.copy_from_slice(&pair.rx_buf[..VNET_HDR_LEN]);
        if fix_rx_header(&mut hdr, features, 1).is_err() {
            pair.rx_len = 0;
            NetMetrics::add(&self.metrics.rx_dropped, 1);
            return Delivery::Dropped;
        }
        let q = &mut a.queues[2 * p];
        let mut start = q.next_avail();
        self.segs.clear();
        self.rx_chains.clear();
        let mut cap = 0usize;
        while cap < len {
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                let seen = q.next_avail();
                q.set_next_avail(start);
                return Delivery::NoBuffers { seen };
            };
            let head = chain.head_index();
            let seg_start = self.segs.len();
            match collect_writable(chain, &a.mem, &mut self.segs) {
                Some(chain_cap) if !mrg && chain_cap < len => {
                    // Without MRG_RXBUF the frame must fit one chain: drop the frame, keep the
                    // chain for the next (smaller) one.
                    self.segs.truncate(seg_start);
                    q.set_next_avail(start);
                    pair.rx_len = 0;
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    return Delivery::Dropped;
                }
                Some(chain_cap) => {
                    cap += chain_cap;
                    self.rx_chains.push((head, self.segs.len()));
                }
                None if self.rx_chains.is_empty() => {
                    // A malformed chain before any good one: return it empty and go on.
                    self.segs.truncate(seg_start);
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    *used = true;
                    if q.add_used(&a.mem, head, 0).is_err() {
                        Net::break_device(a, "cannot write the RX used ring");
                        return Delivery::Dropped;
                    }
                    start = q.next_avail();
                }
                None => {
                    // A malformed chain in the middle of a frame: the frame's used entries must
                    // be consecutive, so return every chain taken for it empty (each used
                    // exactly once, in order) and drop the frame.
                    self.segs.truncate(seg_start);
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    pair.rx_len = 0;
                    *used = true;
                    for &(h, _) in &self.rx_chains {
                        if q.add_used(&a.mem, h, 0).is_err() {
                            Net::break_device(a, "cannot write the RX used ring");
                            return Delivery::Dropped;
                        }
                    }
                    if q.add_used(&a.mem, head, 0).is_err() {
                        Net::break_device(a, "cannot write the RX used ring");
                    }
                    return Delivery::Dropped;
                }
            }
        }
        // Enough room: the header says how many buffers follow.
        let nbufs = self.rx_chains.len() as u16;
        hdr[10..12].copy_from_slice(&nbufs.to_le_bytes());
        pair.rx_buf[..VNET_HDR_LEN].copy_from_slice(&hdr);
        let frame = &pair.rx_buf[..len];
        let mut off = 0usize;
        let mut seg = 0usize;
        for &(head, seg_end) in &self.rx_chains {
            let chain_start = off;
            while seg < seg_end && off < len {
                let s = self.segs[seg];
                let n = (s.len as usize).min(len - off);
                if let Err(e) = a.mem.write_slice(&frame[off..off + n], s.addr) {
                    // Checked by collect_writable; only a memory map change could get here.
                    log::warn!("virtio-net: RX copy failed: {e}");
                }
                off += n;
                seg += 1;
            }
            seg = seg_end;
            if q.add_used(&a.mem, head, (off - chain_start) as u32)
                .is_err()
            {
                Net::break_device(a, "cannot write the RX used ring");
                break;
            }
        }
        pair.rx_len = 0;
        *used = true;
        NetMetrics::add(&self.metrics.rx_frames, 1);
        NetMetrics::add(&self.metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Delivery::Delivered
    }
}

/// Appends the chain's buffers to `segs` and returns their total size, or `None` for a chain
/// the device must not write: a device-readable descriptor, a buffer outside guest memory,
/// too many descriptors, or no room at all.
fn collect_writable<I>(chain: I, mem: &GuestMemory, segs: &mut Vec<Seg>) -> Option<usize>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut cap = 0usize;
    for (n, d) in chain.enumerate() {
        if n >= MAX_CHAIN_DESCS || !d.is_write_only() {
            return None;
        }
        if d.len() == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return None;
        }
        segs.push(Seg {
            addr: d.addr(),
            len: d.len(),
        });
        cap += d.len() as usize;
    }
    (cap > 0).then_some(cap)
}
