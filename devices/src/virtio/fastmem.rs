//! Guest-memory access for the virtqueue hot path, built once per queue pass.
//!
//! Why: every `GuestMemory` access looks the region up (a binary search behind several
//! non-inlined calls) and byte copies go through a generic slice iterator; per virtio-blk request
//! that was about a third of the device's CPU time. A pass maps each region once as a
//! `VolatileSlice` (safe, bounds-checked, carrying the region's dirty bitmap), and accesses are a
//! scan of a few slices and a sub-slice. Writes through these slices mark the dirty bitmap like
//! vm-memory's own API does, so live migration sees them.

use std::sync::atomic::Ordering;

use vm_memory::bitmap::{Bitmap, MS};
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::GuestMemory;

/// Regions mapped directly; guests with more (never the case for ferry's layouts) use the slow
/// path for the rest.
const MAX_FAST_REGIONS: usize = 4;

pub type Slice<'a> = VolatileSlice<'a, MS<'a, GuestMemory>>;

/// Per-pass view of guest memory.
pub struct FastMem<'a> {
    mem: &'a GuestMemory,
    regions: [Option<(u64, Slice<'a>)>; MAX_FAST_REGIONS],
}

impl<'a> FastMem<'a> {
    pub fn new(mem: &'a GuestMemory) -> Self {
        let mut regions: [Option<(u64, Slice<'a>)>; MAX_FAST_REGIONS] = Default::default();
        for (slot, r) in regions.iter_mut().zip(mem.iter()) {
            *slot = r
                .get_slice(MemoryRegionAddress(0), r.len() as usize)
                .ok()
                .map(|s| (r.start_addr().0, s));
        }
        Self { mem, regions }
    }

    /// The guest memory behind this view.
    pub fn memory(&self) -> &'a GuestMemory {
        self.mem
    }

    /// `[addr, addr + len)` as one slice, if it lies inside one region.
    pub fn slice(&self, addr: GuestAddress, len: usize) -> Option<Slice<'a>> {
        for (start, s) in self.regions.iter().flatten() {
            if let Some(off) = addr.0.checked_sub(*start) {
                if off < s.len() as u64 {
                    return s.subslice(off as usize, len).ok();
                }
            }
        }
        if self.mem.num_regions() > MAX_FAST_REGIONS {
            return GuestMemoryBackend::get_slice(self.mem, addr, len).ok();
        }
        None
    }

    /// Copies `out.len()` bytes at `addr` (one region) into `out`.
    pub fn read(&self, addr: GuestAddress, out: &mut [u8]) -> bool {
        self.slice(addr, out.len())
            .is_some_and(|s| s.copy_to(out) == out.len())
    }

    /// Writes one byte and marks it dirty.
    pub fn write_u8(&self, addr: GuestAddress, v: u8) -> bool {
        self.slice(addr, 1)
            .is_some_and(|s| s.store(v, 0, Ordering::Relaxed).is_ok())
    }

    /// Marks `[addr, addr + len)` dirty (memory written behind vm-memory's back).
    pub fn mark_dirty(&self, addr: GuestAddress, len: usize) {
        match self.slice(addr, len) {
            Some(s) => s.bitmap().mark_dirty(0, len),
            // Spans regions (never for a validated buffer): mark what each region holds.
            None => {
                for s in self.mem.get_slices(addr, len).flatten() {
                    s.bitmap().mark_dirty(0, s.len());
                }
            }
        }
    }

    /// Slow path for anything else (GET_ID copies, rare).
    pub fn write_slice(&self, data: &[u8], addr: GuestAddress) -> bool {
        self.mem.write_slice(data, addr).is_ok()
    }
}
