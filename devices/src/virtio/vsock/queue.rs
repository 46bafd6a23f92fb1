//! Moving packets between the three rings and the muxer.
//!
//! * TX: each chain's device-readable bytes are copied once into the device's packet buffer
//!   (at most a header and [`MAX_PAYLOAD`]), the chain is returned to the guest at once, and the
//!   header is validated against what the chain really held before the muxer sees it.
//! * RX: a chain's device-writable buffers are gathered first, so the muxer reads no more host
//!   data than the buffer can hold; a chain with no packet for it goes back to the ring.
//! * Event: one buffer per pending transport reset.
//!
//! Only a broken ring (avail index running ahead, a head outside the table, an unwritable used
//! ring) stops the device, with DEVICE_NEEDS_RESET; a bad chain costs the guest that chain.

use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress};

use super::packet::{validate_tx, BadPacket, Header, HDR_LEN, MAX_PAYLOAD};
use super::{config, count, Active, ActiveQueue, Segment, Vsock};
use crate::virtio::avail::AvailReader;
use crate::virtio::desc::DescWalker;
use crate::virtio::fastmem::FastMem;
use crate::virtio::used::UsedWriter;
use crate::virtio::VirtioInterrupt;
use crate::GuestMemory;

use virtio_queue::QueueT;

/// Most device-writable buffers of one RX or event chain that are used; the rest of a longer
/// chain is left untouched (the segment list is allocated once with the device).
pub const MAX_SEGMENTS: usize = 16;

/// Guest-memory views for one pass over a queue.
struct Pass<'a> {
    fm: FastMem<'a>,
    avail: AvailReader<'a>,
    used: UsedWriter<'a>,
    added: bool,
}

impl<'a> Pass<'a> {
    fn new(mem: &'a GuestMemory, q: &ActiveQueue) -> Option<Self> {
        let fm = FastMem::new(mem);
        let used = UsedWriter::new(&fm, &q.queue).ok()?;
        let avail = AvailReader::new(&fm, &q.queue).ok()?;
        Some(Self {
            fm,
            avail,
            used,
            added: false,
        })
    }

    /// Publishes the used entries, syncs the queue's positions and interrupts the driver if it
    /// asked for it.
    fn end(mut self, q: &mut ActiveQueue, interrupt: &VirtioInterrupt) {
        self.avail.finish(&mut q.queue);
        if self.used.finish(&mut q.queue).is_err() {
            break_queue(q, interrupt, "cannot publish the used ring");
        }
        if self.added && self.used.needs_notification(&mut q.used_state) {
            interrupt.signal_used_queue();
        }
    }
}

fn break_queue(q: &mut ActiveQueue, interrupt: &VirtioInterrupt, why: &str) {
    if !q.broken {
        log::warn!("virtio-vsock: {why}; device needs reset");
        q.broken = true;
        interrupt.set_needs_reset();
    }
}

/// What one queue's pass does with a popped chain.
enum Step {
    /// Used with this length; go on.
    Used(u32),
    /// Not used: back into the ring, and the pass ends (nothing more to put in it).
    GiveBack,
}

impl Vsock {
    /// Runs one pass over queue `qi`, calling `step` for each available chain until it gives
    /// one back or the ring is empty (notifications re-enabled then, per the usual race-free
    /// pattern). `more` is checked before each chain: when false the pass ends without popping.
    fn run_queue(
        &mut self,
        qi: usize,
        more: fn(&Vsock) -> bool,
        step: fn(&mut Vsock, &DescWalker<'_>, &FastMem<'_>, u16) -> Step,
    ) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        {
            let Active {
                mem,
                interrupt,
                queues,
            } = &mut a;
            let q = &mut queues[qi];
            if !q.broken {
                match Pass::new(mem, q) {
                    Some(mut p) => {
                        self.pass(&mut p, mem, q, interrupt, more, step);
                        p.end(q, interrupt);
                    }
                    // Checked at activation; only a memory map change could get here.
                    None => break_queue(q, interrupt, "the rings are not in guest memory"),
                }
            }
        }
        self.active = Some(a);
    }

    fn pass(
        &mut self,
        p: &mut Pass<'_>,
        mem: &GuestMemory,
        q: &mut ActiveQueue,
        interrupt: &VirtioInterrupt,
        more: fn(&Vsock) -> bool,
        step: fn(&mut Vsock, &DescWalker<'_>, &FastMem<'_>, u16) -> Step,
    ) {
        let walker = DescWalker::new(mem, GuestAddress(q.queue.desc_table()), q.queue.size());
        loop {
            if q.queue.disable_notification(mem).is_err() {
                break_queue(q, interrupt, "cannot write the used ring flags");
                return;
            }
            loop {
                if !more(self) {
                    return;
                }
                let head = match p.avail.pop() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(_) => {
                        break_queue(q, interrupt, "avail index runs ahead of the ring");
                        return;
                    }
                };
                match step(self, &walker, &p.fm, head) {
                    Step::Used(len) => {
                        if p.used.add(&mut q.used_state, head, len).is_err() {
                            break_queue(q, interrupt, "a chain head lies outside the table");
                            return;
                        }
                        p.added = true;
                    }
                    Step::GiveBack => {
                        p.avail.unpop();
                        return;
                    }
                }
            }
            // The queue decides about notifications from its own position: sync it first.
            p.avail.finish(&mut q.queue);
            match q.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => {
                    break_queue(q, interrupt, "cannot read the avail ring");
                    return;
                }
            }
        }
    }

    /// Takes the guest's packets off the TX queue. The event loop calls this on TX kicks.
    pub fn process_tx(&mut self) {
        self.run_queue(config::TX, |_| true, Vsock::tx_chain);
    }

    /// Gives the guest what the muxer has for it, while RX buffers last.
    pub fn process_rx(&mut self) {
        self.run_queue(config::RX, |v| v.muxer.has_rx(), Vsock::rx_chain);
    }

    /// Delivers a pending transport-reset event.
    pub fn process_event_queue(&mut self) {
        self.run_queue(config::EVENT, |v| v.reset_event_pending, Vsock::event_chain);
    }

    fn tx_chain(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) -> Step {
        let buf = &mut self.tx_buf;
        let mut n = 0usize;
        let mut writable = false;
        walker.walk(head, |d| {
            if d.writable {
                writable = true;
                return true;
            }
            let take = (d.len as usize).min(buf.len() - n);
            if take == 0 {
                return n < buf.len();
            }
            let out = &mut buf[n..n + take];
            let ok = fm.read(d.addr, out) || fm.memory().read_slice(out, d.addr).is_ok();
            if !ok {
                // Outside guest memory: the chain ends here.
                return false;
            }
            n += take;
            n < buf.len()
        });
        self.tx_packet(n, writable);
        Step::Used(0)
    }

    /// Validates and hands on the packet of `n` bytes in `tx_buf`.
    fn tx_packet(&mut self, n: usize, writable: bool) {
        let Some(raw) = self.tx_buf.first_chunk::<HDR_LEN>() else {
            count(&self.metrics.bad_packets, 1);
            return;
        };
        if n < HDR_LEN {
            count(&self.metrics.bad_packets, 1);
            return;
        }
        let h = Header::parse(raw);
        if writable {
            self.muxer.on_bad_packet(&h, BadPacket::WritableBuffer);
            return;
        }
        match validate_tx(&h, self.muxer.guest_cid(), n - HDR_LEN) {
            Ok(op) => {
                count(&self.metrics.tx_packets, 1);
                count(&self.metrics.tx_bytes, u64::from(h.len));
                let end = HDR_LEN + h.len as usize;
                let payload = self.tx_buf.get(HDR_LEN..end).unwrap_or_default();
                self.muxer.on_guest_packet(&h, op, payload);
            }
            Err(why) => self.muxer.on_bad_packet(&h, why),
        }
    }

    /// Gathers a chain's device-writable buffers (each wholly in one memory region) into
    /// `segments`; returns their total size. Readable buffers are the driver's mistake and are
    /// skipped; a buffer not in one region ends the chain.
    fn gather_writable(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) -> usize {
        self.segments.clear();
        let segments = &mut self.segments;
        let mut total = 0usize;
        walker.walk(head, |d| {
            if !d.writable || d.len == 0 {
                return true;
            }
            if fm.slice(d.addr, d.len as usize).is_none() {
                return false;
            }
            segments.push(Segment {
                addr: d.addr,
                len: d.len,
            });
            total += d.len as usize;
            segments.len() < MAX_SEGMENTS
        });
        total
    }

    /// Writes `parts` in order across `segments`; returns the bytes written.
    fn scatter(&self, fm: &FastMem<'_>, parts: &[&[u8]]) -> usize {
        let mut seg = 0usize;
        let mut seg_off = 0usize;
        let mut written = 0usize;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let Some(s) = self.segments.get(seg) else {
                    return written;
                };
                let room = s.len as usize - seg_off;
                let n = room.min(part.len());
                let addr = GuestAddress(s.addr.0 + seg_off as u64);
                let Some(dst) = fm.slice(addr, n) else {
                    return written;
                };
                dst.copy_from(&part[..n]);
                dst.bitmap().mark_dirty(0, n);
                written += n;
                part = &part[n..];
                seg_off += n;
                if seg_off == s.len as usize {
                    seg += 1;
                    seg_off = 0;
                }
            }
        }
        written
    }

    fn rx_chain(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) -> Step {
        let cap = self.gather_writable(walker, fm, head);
        if cap < HDR_LEN {
            // Cannot hold a header: returned unused rather than left to block the ring.
            count(&self.metrics.bad_packets, 1);
            return Step::Used(0);
        }
        let room = (cap - HDR_LEN).min(MAX_PAYLOAD as usize);
        let Some(h) = self.muxer.next_rx(&mut self.rx_buf[..room]) else {
            return Step::GiveBack;
        };
        let hdr = h.to_bytes();
        let payload = self.rx_buf.get(..h.len as usize).unwrap_or_default();
        let written = self.scatter(fm, &[&hdr, payload]);
        count(&self.metrics.rx_packets, 1);
        count(&self.metrics.rx_bytes, u64::from(h.len));
        Step::Used(written as u32)
    }

    fn event_chain(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) -> Step {
        let cap = self.gather_writable(walker, fm, head);
        if cap < 4 {
            count(&self.metrics.bad_packets, 1);
            return Step::Used(0);
        }
        let event = config::EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = self.scatter(fm, &[&event]);
        self.reset_event_pending = false;
        count(&self.metrics.reset_events, 1);
        Step::Used(written as u32)
    }
}
