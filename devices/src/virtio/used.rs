//! Writing the used ring of a split virtqueue (virtio 1.2 §2.7.8) on the hot path, and the
//! interrupt-suppression check that goes with it (§2.7.10, VIRTIO_F_EVENT_IDX).
//!
//! Why not `Queue::add_used`: it writes each element and the index through `GuestMemory`
//! lookups and slice iterators (a fifth of a virtio-blk request's cost). This writer maps the
//! ring once per pass. It keeps the `Queue`'s `next_used` in step (`finish`), so the queue's
//! saved state stays exact; the count of entries added since the last interrupt check lives
//! here, in [`UsedState`], because the crate's own counter is private.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress};

use super::fastmem::{FastMem, Slice};

/// What the writer needs to remember between passes.
#[derive(Debug, Default)]
pub struct UsedState {
    /// Entries added since the last `needs_notification`.
    num_added: Wrapping<u16>,
}

/// Why the used ring could not be written: the device must stop (DEVICE_NEEDS_RESET).
#[derive(Debug, PartialEq, Eq)]
pub struct UsedRingError;

/// Used ring of one queue for one pass.
pub struct UsedWriter<'a> {
    ring: Slice<'a>,
    avail: Slice<'a>,
    size: u16,
    event_idx: bool,
    next_used: Wrapping<u16>,
    /// Elements were written since the index was last published.
    added: bool,
}

impl<'a> UsedWriter<'a> {
    /// Maps the used ring (and the avail ring, for `used_event`) of `queue`.
    pub fn new(fm: &FastMem<'a>, queue: &Queue) -> Result<Self, UsedRingError> {
        let size = queue.size();
        let n = usize::from(size);
        let ring = fm
            .slice(GuestAddress(queue.used_ring()), 6 + 8 * n)
            .ok_or(UsedRingError)?;
        let avail = fm
            .slice(GuestAddress(queue.avail_ring()), 6 + 2 * n)
            .ok_or(UsedRingError)?;
        Ok(Self {
            ring,
            avail,
            size,
            event_idx: queue.event_idx_enabled(),
            next_used: Wrapping(queue.next_used()),
            added: false,
        })
    }

    /// Writes one used element. The driver sees it when [`UsedWriter::finish`] publishes the
    /// index (once per pass: one release store and one dirty-bitmap update for the batch).
    pub fn add(&mut self, st: &mut UsedState, head: u16, len: u32) -> Result<(), UsedRingError> {
        if head >= self.size {
            return Err(UsedRingError);
        }
        let offset = 4 + 8 * usize::from(self.next_used.0 % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if offset + elem.len() > self.ring.len() {
            return Err(UsedRingError);
        }
        // SAFETY: `offset + 8` is within the mapped used ring (checked above), which lives as
        // long as the slice; a byte array needs no alignment. The dirty bitmap is updated for
        // the whole ring in `finish`, after the writes, which is what live migration needs.
        unsafe {
            std::ptr::write_volatile(
                self.ring
                    .ptr_guard_mut()
                    .as_ptr()
                    .add(offset)
                    .cast::<[u8; 8]>(),
                elem,
            )
        };
        self.next_used += Wrapping(1);
        st.num_added += Wrapping(1);
        self.added = true;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the entries added since the last check (the
    /// same rule as Linux's `vring_need_event`); always true without EVENT_IDX.
    pub fn needs_notification(&self, st: &mut UsedState) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.event_idx {
            st.num_added = Wrapping(0);
            return true;
        }
        let off = 4 + 2 * usize::from(self.size);
        let Ok(used_event) = self.avail.load::<u16>(off, Ordering::Relaxed) else {
            return true;
        };
        let used_event = Wrapping(u16::from_le(used_event));
        let old = self.next_used - st.num_added;
        st.num_added = Wrapping(0);
        self.next_used - used_event - Wrapping(1) < self.next_used - old
    }

    /// Publishes the elements added this pass (element writes, then the index with release
    /// ordering, so the driver never sees an index ahead of its elements), marks the ring dirty,
    /// and writes the position back into the queue (its saved state).
    pub fn finish(&mut self, queue: &mut Queue) -> Result<(), UsedRingError> {
        queue.set_next_used(self.next_used.0);
        if !std::mem::take(&mut self.added) {
            return Ok(());
        }
        self.ring
            .store(self.next_used.0.to_le(), 2, Ordering::Release)
            .map_err(|_| UsedRingError)?;
        self.ring.bitmap().mark_dirty(0, self.ring.len());
        Ok(())
    }
}
