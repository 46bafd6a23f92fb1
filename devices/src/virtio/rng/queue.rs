//! Serving requests: pop a chain, pick the buffers that may be written, take the rate limiter's
//! tokens, fill them from `getrandom(2)`, publish the used entry.
//!
//! Guest-controlled chains are checked buffer by buffer: read-only buffers (the device must not
//! write them), zero-length ones and ones that are not entirely guest RAM are skipped and never
//! written; a request gets at most [`config::MAX_REQUEST_BYTES`] and
//! [`config::MAX_SEGMENTS`] buffers, and never more than a descriptor's length. The used length
//! is exactly the number of bytes written. Only a broken ring (avail index running ahead, a
//! head outside the table, an unwritable used ring) stops the device, with DEVICE_NEEDS_RESET.

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{config, Active, ActiveQueue, Rng, RngMetrics, Segment};
use crate::virtio::avail::AvailReader;
use crate::virtio::desc::DescWalker;
use crate::virtio::fastmem::{FastMem, Slice};
use crate::virtio::used::UsedWriter;
use crate::GuestMemory;

use virtio_queue::QueueT;

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
        if self.used.finish(&mut q.queue).is_err() {
            break_queue(q, "cannot publish the used ring");
        }
        if self.added && self.used.needs_notification(&mut q.used_state) {
            q.interrupt.signal_used_queue();
        }
    }
}

fn break_queue(q: &mut ActiveQueue, why: &str) {
    if !q.broken {
        log::warn!("virtio-rng: {why}; device needs reset");
        q.broken = true;
        q.interrupt.set_needs_reset();
    }
}

impl Rng {
    /// Serves every available request the rate limiter admits, and interrupts the guest if it
    /// wants to know. The event loop calls this on queue kicks and limiter wake-ups; it is
    /// public for benchmarks.
    pub fn process_queue(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let Active { mem, q } = &mut a;
        if !q.broken {
            match Pass::new(mem, q) {
                Some(mut p) => {
                    self.run_queue(&mut p, mem, q);
                    p.end(q);
                }
                // Checked at activation; only a memory map change could get here.
                None => break_queue(q, "the rings are not in guest memory"),
            }
        }
        self.active = Some(a);
    }

    fn run_queue(&mut self, p: &mut Pass<'_>, mem: &GuestMemory, q: &mut ActiveQueue) {
        let walker = DescWalker::new(mem, GuestAddress(q.queue.desc_table()), q.queue.size());
        loop {
            if q.queue.disable_notification(mem).is_err() {
                break_queue(q, "cannot write the used ring flags");
                return;
            }
            loop {
                let head = match p.avail.pop() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(_) => {
                        break_queue(q, "avail index runs ahead of the ring");
                        return;
                    }
                };
                let bytes = self.collect(&walker, &p.fm, head);
                if !self.admit(bytes) {
                    // Back into the ring: the timer retries it, and a snapshot taken meanwhile
                    // saves the ring with the request still available.
                    p.avail.unpop();
                    return;
                }
                let written = self.fill(&p.fm);
                if p.used.add(&mut q.used_state, head, written).is_err() {
                    break_queue(q, "a request head lies outside the descriptor table");
                    return;
                }
                p.added = true;
                RngMetrics::add(&self.metrics.requests, 1);
                RngMetrics::add(&self.metrics.bytes, u64::from(written));
            }
            // The queue decides about notifications from its own position: sync it first.
            p.avail.finish(&mut q.queue);
            match q.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => {
                    break_queue(q, "cannot read the avail ring");
                    return;
                }
            }
        }
    }

    /// Gathers the request's writable buffers that lie in guest memory into `segments`, up to
    /// the per-request limits; returns the bytes they hold.
    fn collect(&mut self, walker: &DescWalker<'_>, fm: &FastMem<'_>, head: u16) -> u32 {
        self.segments.clear();
        let segments = &mut self.segments;
        let metrics = &self.metrics;
        let mut total = 0u32;
        walker.walk(head, |d| {
            if !d.writable {
                // A device-readable buffer in an entropy request: the driver is confused; the
                // device must not write it.
                RngMetrics::add(&metrics.bad_buffers, 1);
                return true;
            }
            let len = d.len.min(config::MAX_REQUEST_BYTES - total);
            if len == 0 {
                return total < config::MAX_REQUEST_BYTES;
            }
            let in_memory = fm.slice(d.addr, len as usize).is_some()
                || GuestMemoryBackend::check_range(fm.memory(), d.addr, len as usize);
            if !in_memory {
                RngMetrics::add(&metrics.bad_buffers, 1);
                return true;
            }
            segments.push(Segment { addr: d.addr, len });
            total += len;
            total < config::MAX_REQUEST_BYTES && segments.len() < config::MAX_SEGMENTS
        });
        total
    }

    /// Takes one op and `bytes` from the rate limiter. Unlimited: one inlined check. Each time
    /// this puts the device to sleep on the limiter's timer (a refusal, or a request larger
    /// than the bucket that left a debt) counts as a throttle event.
    #[inline]
    fn admit(&mut self, bytes: u32) -> bool {
        if self.limiter.is_unlimited() {
            return true;
        }
        self.admit_limited(bytes)
    }

    #[inline(never)]
    fn admit_limited(&mut self, bytes: u32) -> bool {
        let was_blocked = self.limiter.is_blocked();
        let admitted = self.limiter.consume_op(u64::from(bytes));
        if !was_blocked && self.limiter.is_blocked() {
            RngMetrics::add(&self.metrics.throttled, 1);
        }
        admitted
    }

    /// Fills the collected segments; returns the bytes written (they are contiguous in the
    /// chain's order: a host failure stops at the first byte not written).
    fn fill(&mut self, fm: &FastMem<'_>) -> u32 {
        let mut written = 0u32;
        for seg in &self.segments {
            let n = match fm.slice(seg.addr, seg.len as usize) {
                Some(s) => fill_slice(&s),
                // Spans two regions (checked to be RAM when collected): one slice per region.
                None => {
                    let mut n = 0;
                    for s in fm.memory().get_slices(seg.addr, seg.len as usize) {
                        let Ok(s) = s else { break };
                        let got = fill_slice(&s);
                        n += got;
                        if got < s.len() {
                            break;
                        }
                    }
                    n
                }
            };
            // n <= seg.len, a u32.
            written += n as u32;
            if n < seg.len as usize {
                RngMetrics::add(&self.metrics.host_fails, 1);
                break;
            }
        }
        written
    }
}

/// Fills `s` from `getrandom(2)` directly in guest memory and marks what was written dirty (for
/// live migration). Returns the bytes written: all of them unless the host failed.
///
/// `GRND_NONBLOCK`: the device thread must never sleep on the host's entropy pool. After the
/// host's early boot the pool never blocks, so this only matters in theory; a refusal is a
/// host failure and the request gets what was written before.
fn fill_slice(s: &Slice<'_>) -> usize {
    let len = s.len();
    let base = s.ptr_guard_mut().as_ptr();
    let mut done = 0usize;
    while done < len {
        // SAFETY: `base..base + len` is one mapped guest memory region slice (bounds checked
        // when the slice was made) that lives as long as `s`; getrandom writes at most
        // `len - done` bytes from `base + done`.
        let r = unsafe { libc::getrandom(base.add(done).cast(), len - done, libc::GRND_NONBLOCK) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::warn!("virtio-rng: getrandom failed: {err}");
            break;
        }
        if r == 0 {
            break;
        }
        done += r as usize;
    }
    s.bitmap().mark_dirty(0, done);
    done
}
