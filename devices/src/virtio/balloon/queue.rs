//! Serving the queues: inflate (release pages), deflate (nothing to do but count), statistics
//! (read and hold the guest's buffer) and free page reporting (release, the pages stay the
//! guest's).
//!
//! Every buffer is guest-controlled: pfn buffers are read only as far as whole pfns go and only
//! from guest RAM, at most [`MAX_PFNS_PER_REQUEST`] per request; each pfn is checked against
//! guest memory before anything is derived from it. Only a broken ring (avail index running
//! ahead, a head outside the table, an unwritable used ring) stops the device, with
//! DEVICE_NEEDS_RESET; a bad buffer is skipped and its request completed.

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::config::{self, PFN_BATCH};
use super::ranges::{self, PageRange};
use super::{Active, ActiveQueue, Balloon, BalloonMetrics};
use crate::virtio::avail::AvailReader;
use crate::virtio::desc::{Desc, DescWalker};
use crate::virtio::fastmem::FastMem;
use crate::virtio::used::UsedWriter;
use crate::GuestMemory;

/// Most pfns read from one request (Linux sends up to 256). The rest of a longer request is
/// ignored: those pages stay resident, which only costs the host what it had before.
pub const MAX_PFNS_PER_REQUEST: usize = 4096;

/// What a queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// Guest-memory views for one pass over one queue.
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

    fn end(mut self, q: &mut ActiveQueue, interrupt: &crate::virtio::VirtioInterrupt) {
        self.avail.finish(&mut q.queue);
        if self.used.finish(&mut q.queue).is_err() {
            break_queue(q, interrupt, "cannot publish the used ring");
        }
        if self.added && self.used.needs_notification(&mut q.used_state) {
            interrupt.signal_used_queue();
        }
    }
}

fn break_queue(q: &mut ActiveQueue, interrupt: &crate::virtio::VirtioInterrupt, why: &str) {
    if !q.broken {
        log::warn!("virtio-balloon: {why}; device needs reset");
        q.broken = true;
        interrupt.set_needs_reset();
    }
}

impl Balloon {
    fn kind(&self, index: usize) -> Option<Kind> {
        match index {
            config::INFLATE => Some(Kind::Inflate),
            config::DEFLATE => Some(Kind::Deflate),
            i if Some(i) == self.stats_index => Some(Kind::Stats),
            i if Some(i) == self.reporting_index => Some(Kind::Reporting),
            _ => None,
        }
    }

    /// Serves every available request of queue `index`. The event loop calls this on kicks and
    /// after activation; public for tests and benchmarks.
    pub fn process_queue(&mut self, index: usize) {
        let Some(kind) = self.kind(index) else {
            return;
        };
        let Some(mut a) = self.active.take() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            queues,
        } = &mut a;
        if let Some(q) = queues
            .get_mut(index)
            .filter(|q| q.queue.ready() && !q.broken)
        {
            match Pass::new(mem, q) {
                Some(mut p) => {
                    self.run_queue(kind, &mut p, mem, q, interrupt);
                    p.end(q, interrupt);
                }
                None => break_queue(q, interrupt, "the rings are not in guest memory"),
            }
        }
        self.active = Some(a);
    }

    fn run_queue(
        &mut self,
        kind: Kind,
        p: &mut Pass<'_>,
        mem: &GuestMemory,
        q: &mut ActiveQueue,
        interrupt: &crate::virtio::VirtioInterrupt,
    ) {
        let walker = DescWalker::new(mem, GuestAddress(q.queue.desc_table()), q.queue.size());
        loop {
            if q.queue.disable_notification(mem).is_err() {
                break_queue(q, interrupt, "cannot write the used ring flags");
                return;
            }
            loop {
                let head = match p.avail.pop() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(_) => {
                        break_queue(q, interrupt, "avail index runs ahead of the ring");
                        return;
                    }
                };
                let complete_now = match kind {
                    Kind::Inflate => {
                        self.inflate(&walker, &p.fm, head);
                        BalloonMetrics::add(&self.metrics.inflate_count, 1);
                        Some(head)
                    }
                    Kind::Deflate => {
                        // Deflated pages need nothing: the next guest access faults a zero page
                        // in (anonymous memory) or finds the huge page still there.
                        BalloonMetrics::add(&self.metrics.deflate_count, 1);
                        Some(head)
                    }
                    Kind::Stats => self.stats_buffer(&walker, &p.fm, head),
                    Kind::Reporting => {
                        self.report(&walker, &p.fm, head);
                        BalloonMetrics::add(&self.metrics.free_page_report_count, 1);
                        Some(head)
                    }
                };
                if let Some(done) = complete_now {
                    if p.used.add(&mut q.used_state, done, 0).is_err() {
                        break_queue(q, interrupt, "a request head lies outside the table");
                        return;
                    }
                    p.added = true;
                }
            }
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

    /// Reads the pfns of one inflate request, releasing them batch by batch.
    fn inflate(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) {
        let mut left = MAX_PFNS_PER_REQUEST;
        walker.walk(head, |d| {
            left -= self.read_pfns(fm, d, left);
            left > 0
        });
        self.flush_pfns(fm.memory());
    }

    /// Appends up to `max` valid pfns of buffer `d` to the batch (releasing full batches);
    /// returns how many pfns were read.
    fn read_pfns(&mut self, fm: &FastMem<'_>, d: Desc, max: usize) -> usize {
        if !d.len.is_multiple_of(4) {
            BalloonMetrics::add(&self.metrics.bad_pfns, 1);
        }
        let count = (d.len as usize / 4).min(max);
        let mut chunk = [0u8; 1024];
        let mut read = 0;
        while read < count {
            let n = (count - read).min(chunk.len() / 4);
            let Some(addr) = d.addr.0.checked_add(read as u64 * 4) else {
                break;
            };
            if !fm.read(GuestAddress(addr), &mut chunk[..n * 4]) {
                // Not guest RAM (or split across regions): the rest of the buffer is skipped.
                BalloonMetrics::add(&self.metrics.bad_pfns, (count - read) as u64);
                break;
            }
            for raw in chunk[..n * 4].chunks_exact(4) {
                let pfn = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                if !ranges::pfn_in_memory(fm.memory(), pfn) {
                    BalloonMetrics::add(&self.metrics.bad_pfns, 1);
                    continue;
                }
                self.pfns.push(pfn);
                if self.pfns.len() == PFN_BATCH {
                    self.flush_pfns(fm.memory());
                }
            }
            read += n;
        }
        count
    }

    /// Releases the batch's pages, one `madvise` per contiguous range.
    fn flush_pfns(&mut self, mem: &GuestMemory) {
        if self.pfns.is_empty() {
            return;
        }
        ranges::coalesce(&mut self.pfns, &mut self.ranges);
        self.pfns.clear();
        for &range in &self.ranges {
            match ranges::release(mem, range) {
                Ok(r) => BalloonMetrics::add(&self.metrics.released_bytes, r.bytes),
                Err(e) => {
                    log::warn!(
                        "virtio-balloon: releasing {:#x}+{:#x}: {e}",
                        range.gpa,
                        range.len
                    );
                    BalloonMetrics::add(&self.metrics.release_fails, 1);
                }
            }
        }
    }

    /// Takes the guest's statistics from `head` and holds the buffer until the next poll.
    /// Returns a buffer to complete now: the previously held one, when a driver sent a second
    /// (it should not; giving the old one back keeps its ring from filling up).
    fn stats_buffer(
        &mut self,
        walker: &DescWalker<'_>,
        fm: &FastMem<'_>,
        head: u16,
    ) -> Option<u16> {
        BalloonMetrics::add(&self.metrics.stats_updates_count, 1);
        let mut first = None;
        walker.walk(head, |d| {
            first = Some(d);
            false
        });
        let mut buf = [0u8; config::MAX_STATS_BYTES as usize];
        match first {
            Some(d) if !d.writable => {
                let len = (d.len.min(config::MAX_STATS_BYTES) as usize / super::stats::STAT_SIZE)
                    * super::stats::STAT_SIZE;
                if fm.read(d.addr, &mut buf[..len]) {
                    self.stats.record_buffer(&buf[..len]);
                } else {
                    BalloonMetrics::add(&self.metrics.stats_update_fails, 1);
                }
            }
            _ => BalloonMetrics::add(&self.metrics.stats_update_fails, 1),
        }
        self.stats_head.replace(head)
    }

    /// Releases the free page blocks of one report (each buffer one block, page-aligned
    /// inwards, entirely in one guest memory region or refused).
    fn report(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) {
        let mem = fm.memory();
        let metrics = self.metrics.clone();
        walker.walk(head, |d| {
            // An address near the top of the address space has no next page boundary: it is
            // not guest memory anyway.
            let Some(start) = d.addr.0.checked_next_multiple_of(config::PAGE_SIZE) else {
                BalloonMetrics::add(&metrics.free_page_report_fails, 1);
                return true;
            };
            let end =
                (d.addr.0.saturating_add(u64::from(d.len)) / config::PAGE_SIZE) * config::PAGE_SIZE;
            if end <= start {
                return true;
            }
            if fm
                .slice(GuestAddress(start), (end - start) as usize)
                .is_none()
            {
                BalloonMetrics::add(&metrics.free_page_report_fails, 1);
                return true;
            }
            match ranges::release(
                mem,
                PageRange {
                    gpa: start,
                    len: end - start,
                },
            ) {
                Ok(r) => BalloonMetrics::add(&metrics.free_page_report_freed, r.bytes),
                Err(e) => {
                    log::warn!("virtio-balloon: free page report {start:#x}: {e}");
                    BalloonMetrics::add(&metrics.free_page_report_fails, 1);
                }
            }
            true
        });
    }

    /// Gives the held statistics buffer back (used length 0), asking the guest for fresh
    /// statistics. Called on the polling timer and when the interval changes (public for
    /// tests and fuzzing).
    pub fn request_stats(&mut self) {
        let Some(index) = self.stats_index else {
            return;
        };
        let Some(mut a) = self.active.take() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            queues,
        } = &mut a;
        match (self.stats_head.take(), queues.get_mut(index)) {
            (Some(head), Some(q)) if q.queue.ready() && !q.broken => match Pass::new(mem, q) {
                Some(mut p) => {
                    if p.used.add(&mut q.used_state, head, 0).is_err() {
                        break_queue(q, interrupt, "the statistics head lies outside the table");
                    } else {
                        p.added = true;
                    }
                    p.end(q, interrupt);
                }
                None => break_queue(q, interrupt, "the rings are not in guest memory"),
            },
            // No buffer yet (the driver has not sent its first) or no queue: nothing to ask.
            _ => BalloonMetrics::add(&self.metrics.stats_update_fails, 1),
        }
        self.active = Some(a);
    }
}
