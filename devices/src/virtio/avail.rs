//! Reading the avail ring of a split virtqueue (virtio 1.2 §2.7.6) on the hot path.
//!
//! Why not `Queue::pop_descriptor_chain`: it re-reads the ring index and each head through
//! `GuestMemory` lookups and slice iterators for every request. This reader maps the ring once
//! per pass, reads the index only when the cached one is used up, and hands back head indexes.
//! [`AvailReader::finish`] writes the position back into the `Queue`, which owns the saved state
//! and the notification-suppression logic (call it before `enable_notification`).

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::fastmem::{FastMem, Slice};

/// The driver published an index more than a ring ahead of the device: it is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct AvailRingError;

/// Avail ring of one queue for one pass.
pub struct AvailReader<'a> {
    ring: Slice<'a>,
    size: u16,
    next_avail: Wrapping<u16>,
    /// Last index read from the driver.
    avail_idx: Wrapping<u16>,
}

impl<'a> AvailReader<'a> {
    pub fn new(fm: &FastMem<'a>, queue: &Queue) -> Result<Self, AvailRingError> {
        let size = queue.size();
        let ring = fm
            .slice(GuestAddress(queue.avail_ring()), 6 + 2 * usize::from(size))
            .ok_or(AvailRingError)?;
        let next = Wrapping(queue.next_avail());
        Ok(Self {
            ring,
            size,
            next_avail: next,
            avail_idx: next,
        })
    }

    /// The next available head, `None` when the driver has published nothing more.
    pub fn pop(&mut self) -> Result<Option<u16>, AvailRingError> {
        if self.next_avail == self.avail_idx {
            // Acquire: the ring entries and descriptors the driver wrote before publishing the
            // index are visible after this load.
            let idx: u16 = self
                .ring
                .load(2, Ordering::Acquire)
                .map_err(|_| AvailRingError)?;
            self.avail_idx = Wrapping(u16::from_le(idx));
            if (self.avail_idx - self.next_avail).0 > self.size {
                return Err(AvailRingError);
            }
            if self.next_avail == self.avail_idx {
                return Ok(None);
            }
        }
        let slot = usize::from(self.next_avail.0 % self.size);
        let head: u16 = self
            .ring
            .load(4 + 2 * slot, Ordering::Relaxed)
            .map_err(|_| AvailRingError)?;
        self.next_avail += Wrapping(1);
        Ok(Some(u16::from_le(head)))
    }

    /// Gives back the head the last `pop` returned, so the next pass pops it again. A device
    /// whose rate limiter refuses a request leaves it in the ring this way: the saved queue state
    /// (snapshots, migration) then never loses a request held back. Only after a successful
    /// `pop` in the same pass.
    pub fn unpop(&mut self) {
        self.next_avail -= Wrapping(1);
    }

    /// Writes the position back into the queue.
    pub fn finish(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail.0);
    }
}
