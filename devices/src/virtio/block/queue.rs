//! Queue processing: pop requests, parse them into slots, submit them to the backend in batches
//! (one `kick` per pass), complete them into the used ring.
//!
//! Back-pressure: requests are popped only while a slot is free. If the backend still answers
//! `Busy`, the parsed request stays in its slot as `pending` and popping stops; the next
//! completion retries it first. A popped request is therefore never lost or reordered behind
//! later ones, whatever the guest does meanwhile.
//!
//! Rate limiting uses the same hold: before submission a request takes one op and (reads and
//! writes) its data length from the limiter. Refused, it stays `pending` (not yet admitted),
//! popping stops with guest notifications off, and the limiter's timerfd wakes the device when
//! the tokens are there; then it is admitted and submitted first. A request larger than the
//! bandwidth bucket passes when the bucket is out of debt (see [`crate::rate_limiter`]).
//! `quiesce` submits a held request without waiting for tokens (the VM is being saved).
//!
//! Each pass maps guest memory and the three rings once ([`Pass`]); `virtio_queue::Queue` keeps
//! the positions (saved state) and the notification-suppression writes.

use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::request::{self, NoStatus, Outcome, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use super::{Active, ActiveQueue, Block, BlockMetrics};
use crate::storage::{DiskError, DiskOp, DiskRequest, SubmitError};
use crate::virtio::avail::AvailReader;
use crate::virtio::desc::DescWalker;
use crate::virtio::fastmem::FastMem;
use crate::virtio::used::UsedWriter;
use crate::GuestMemory;

/// How long a reset or quiesce waits for in-flight backend I/O before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

enum Submitted {
    Queued,
    Busy,
    Failed,
}

/// Guest-memory views for one pass over the queue.
struct Pass<'a> {
    fm: FastMem<'a>,
    avail: AvailReader<'a>,
    used: UsedWriter<'a>,
    /// A used entry was added: the driver may need an interrupt.
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
    fn end(mut self, q: &mut ActiveQueue) {
        self.avail.finish(&mut q.queue);
        if self.used.finish(&mut q.queue).is_err() && !q.broken {
            q.broken = true;
            q.interrupt.set_needs_reset();
            log::warn!("virtio-blk: cannot publish the used ring; device needs reset");
        }
        if self.added && self.used.needs_notification(&mut q.used_state) {
            q.interrupt.signal_used_queue();
        }
    }
}

impl Block {
    /// Handles a queue kick or a backend completion: reaps completions, retries the pending
    /// request, pops and submits new ones, and interrupts the guest if it wants to know.
    ///
    /// The event loop calls this on every event; it is public for benchmarks and for a VMM
    /// that wants to poll instead.
    pub fn process_queue(&mut self) {
        let Some(mut a) = self.active.take() else {
            self.discard_completions();
            return;
        };
        let Active { mem, q } = &mut a;
        match Pass::new(mem, q) {
            Some(mut p) => {
                if q.broken {
                    self.reap(&mut p, q, true);
                } else {
                    self.run_queue(&mut p, mem, q);
                }
                p.end(q);
            }
            None => {
                // Checked at activation; only a memory map change could get here.
                if !q.broken {
                    self.break_device(q, "the used ring is not in guest memory");
                }
                self.discard_completions();
            }
        }
        self.active = Some(a);
    }

    fn run_queue(&mut self, p: &mut Pass<'_>, mem: &GuestMemory, q: &mut ActiveQueue) {
        let limits = self.limits();
        // Completions first, to free slots. With nothing in flight there is nothing to collect
        // (the notifier is re-armed by the reap after the kick below): saves a syscall a pass.
        if self.backend.in_flight() > 0 {
            self.reap(p, q, true);
        }
        let walker = DescWalker::new(mem, GuestAddress(q.queue.desc_table()), q.queue.size());
        if let Some(idx) = self.pending {
            if self.pending_admitted || self.admit(idx) {
                self.pending_admitted = true;
                match self.submit(idx) {
                    Submitted::Queued => self.pending = None,
                    Submitted::Busy => {}
                    Submitted::Failed => {
                        self.pending = None;
                        self.finish(p, q, idx, STATUS_IOERR, 1);
                    }
                }
            }
        }
        'outer: loop {
            if self.pending.is_some() || q.broken {
                break;
            }
            if q.queue.disable_notification(mem).is_err() {
                self.break_device(q, "cannot write the used ring flags");
                break;
            }
            loop {
                if self.free_slots.is_empty() {
                    // Synchronous backends finish inside submit: collect before giving up.
                    self.kick();
                    self.reap(p, q, true);
                    if self.free_slots.is_empty() {
                        break 'outer;
                    }
                }
                let head = match p.avail.pop() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(_) => {
                        self.break_device(q, "avail index runs ahead of the ring");
                        break 'outer;
                    }
                };
                let Some(idx) = self.take_slot() else {
                    break 'outer;
                };
                let slot = &mut self.slots[idx as usize];
                let parsed = request::parse(
                    &walker,
                    head,
                    &p.fm,
                    &limits,
                    &self.id,
                    &mut self.descs,
                    slot,
                );
                match parsed {
                    Err(NoStatus) => {
                        self.release_slot(idx);
                        self.break_device(q, "request chain has no status byte");
                        break 'outer;
                    }
                    Ok(Outcome::Complete { status, used_len }) => {
                        self.finish(p, q, idx, status, used_len);
                    }
                    Ok(Outcome::Submit) => {
                        if !self.admit(idx) {
                            self.pending = Some(idx);
                            self.pending_admitted = false;
                            break 'outer;
                        }
                        match self.submit(idx) {
                            Submitted::Queued => {}
                            Submitted::Busy => {
                                self.pending = Some(idx);
                                self.pending_admitted = true;
                                break 'outer;
                            }
                            Submitted::Failed => self.finish(p, q, idx, STATUS_IOERR, 1),
                        }
                    }
                }
            }
            // The queue decides about notifications from its own position: sync it first.
            p.avail.finish(&mut q.queue);
            match q.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.break_device(q, "cannot read the avail ring");
                    break;
                }
            }
        }
        self.kick();
        self.reap(p, q, true);
    }

    /// Takes the request's tokens from the rate limiter: one op, and its data bytes for reads
    /// and writes. Unlimited: one inlined check. Each time this puts the device to sleep on the
    /// limiter's timer (a refusal, or a request larger than the bucket that left a debt) counts
    /// as a throttle event.
    #[inline]
    fn admit(&mut self, idx: u16) -> bool {
        if self.limiter.is_unlimited() {
            return true;
        }
        self.admit_limited(idx)
    }

    #[inline(never)]
    fn admit_limited(&mut self, idx: u16) -> bool {
        let slot = &self.slots[usize::from(idx)];
        let bytes = match slot.op {
            DiskOp::Read | DiskOp::Write => slot.len,
            _ => 0,
        };
        let was_blocked = self.limiter.is_blocked();
        let admitted = self.limiter.consume_op(bytes);
        if !was_blocked && self.limiter.is_blocked() {
            BlockMetrics::add(&self.metrics.throttled, 1);
        }
        admitted
    }

    fn submit(&mut self, idx: u16) -> Submitted {
        let slot = &self.slots[idx as usize];
        let req = DiskRequest {
            tag: u64::from(idx),
            op: slot.op,
            offset: slot.offset,
            len: slot.len,
            bufs: &slot.bufs,
        };
        match self.backend.submit(&req) {
            Ok(()) => Submitted::Queued,
            Err(SubmitError::Busy) => Submitted::Busy,
            Err(SubmitError::Io(e)) => {
                log::warn!("virtio-blk: backend refused request: {e}");
                Submitted::Failed
            }
        }
    }

    fn kick(&mut self) {
        if let Err(e) = self.backend.kick() {
            log::error!("virtio-blk: backend kick failed: {e}");
        }
    }

    /// Collects backend completions. With `report`, writes status and used entries; without
    /// (reset), only marks read buffers dirty and frees the slots.
    fn reap(&mut self, p: &mut Pass<'_>, q: &mut ActiveQueue, report: bool) {
        self.backend.poll_completions(&mut self.completions);
        if self.completions.is_empty() {
            return;
        }
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            let Some(idx) = u16::try_from(c.tag)
                .ok()
                .filter(|&i| self.slot_busy.get(usize::from(i)) == Some(&true))
            else {
                log::error!("virtio-blk: backend completed unknown tag {}", c.tag);
                continue;
            };
            let slot = &self.slots[usize::from(idx)];
            let status = match c.result {
                Ok(_) => STATUS_OK,
                Err(DiskError::Unsupported) => STATUS_UNSUPP,
                Err(DiskError::Io) => STATUS_IOERR,
            };
            if slot.op == DiskOp::Read {
                // The backend wrote guest memory behind vm-memory's back (raw pointers, maybe
                // the kernel): record it for live migration, even for a failed read.
                for (buf, addr) in slot.bufs.iter().zip(&slot.addrs) {
                    p.fm.mark_dirty(*addr, buf.len as usize);
                }
            }
            if report && !q.broken {
                let used_len = if status == STATUS_OK {
                    slot.used_len_ok()
                } else {
                    1
                };
                self.finish(p, q, idx, status, used_len);
            } else {
                self.release_slot(idx);
            }
        }
        self.completions = completions;
    }

    /// Writes the status byte, adds the used entry, counts, and frees the slot.
    fn finish(&mut self, p: &mut Pass<'_>, q: &mut ActiveQueue, idx: u16, status: u8, len: u32) {
        let slot = &self.slots[usize::from(idx)];
        if !p.fm.write_u8(slot.status_addr, status) {
            // Checked at parse time; only a memory map change could get here.
            log::warn!("virtio-blk: cannot write request status");
        }
        if p.used.add(&mut q.used_state, slot.head, len).is_ok() {
            p.added = true;
        } else if !q.broken {
            q.broken = true;
            q.interrupt.set_needs_reset();
            log::warn!("virtio-blk: cannot write the used ring; device needs reset");
        }
        let m = &self.metrics;
        BlockMetrics::add(&m.requests, 1);
        if status != STATUS_OK {
            BlockMetrics::add(&m.errors, 1);
        } else {
            match slot.op {
                DiskOp::Read => BlockMetrics::add(&m.read_bytes, slot.len),
                DiskOp::Write => BlockMetrics::add(&m.write_bytes, slot.len),
                DiskOp::Flush => BlockMetrics::add(&m.flushes, 1),
                DiskOp::Discard | DiskOp::WriteZeroes => {}
            }
        }
        self.release_slot(idx);
    }

    fn take_slot(&mut self) -> Option<u16> {
        let idx = self.free_slots.pop()?;
        self.slot_busy[usize::from(idx)] = true;
        Some(idx)
    }

    fn release_slot(&mut self, idx: u16) {
        self.slot_busy[usize::from(idx)] = false;
        self.free_slots.push(idx);
    }

    fn break_device(&mut self, q: &mut ActiveQueue, why: &str) {
        log::warn!("virtio-blk: {why}; device needs reset");
        q.broken = true;
        q.interrupt.set_needs_reset();
    }

    /// Completions that cannot be reported (inactive after a reset that timed out, or the used
    /// ring vanished): free their slots.
    fn discard_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        self.backend.poll_completions(&mut completions);
        for c in completions.drain(..) {
            if let Ok(idx) = u16::try_from(c.tag) {
                if self.slot_busy.get(usize::from(idx)) == Some(&true) {
                    self.release_slot(idx);
                }
            }
        }
        self.completions = completions;
    }

    /// Waits for in-flight backend requests. With `report` (quiesce) they complete to the guest
    /// and the pending request is submitted too; without (reset) results are dropped.
    pub(super) fn drain(&mut self, report: bool) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        if !report {
            if let Some(idx) = self.pending.take() {
                self.release_slot(idx);
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let Active { mem, q } = &mut a;
        loop {
            let Some(mut p) = Pass::new(mem, q) else {
                self.discard_completions();
                break;
            };
            if let Some(idx) = self.pending {
                // Saving the VM: a request the limiter held goes now, not lost or reordered.
                self.pending_admitted = true;
                match self.submit(idx) {
                    Submitted::Queued => self.pending = None,
                    Submitted::Busy => {}
                    Submitted::Failed => {
                        self.pending = None;
                        self.finish(&mut p, q, idx, STATUS_IOERR, 1);
                    }
                }
            }
            self.kick();
            self.reap(&mut p, q, report);
            p.end(q);
            if self.backend.in_flight() == 0 && self.pending.is_none() {
                break;
            }
            if Instant::now() > deadline {
                log::error!(
                    "virtio-blk: {} requests still in flight after {DRAIN_TIMEOUT:?}",
                    self.backend.in_flight()
                );
                break;
            }
            wait_readable(self.backend.notifier(), 10);
        }
        self.active = Some(a);
    }
}

/// Sleeps until `fd` is readable or `timeout_ms` passed; just sleeps when there is no fd.
pub(super) fn wait_readable(fd: Option<std::os::fd::RawFd>, timeout_ms: i32) {
    let Some(fd) = fd else {
        std::thread::sleep(Duration::from_millis(1));
        return;
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the result only decides when we look again.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}
