//! Which guest pages changed: KVM's dirty log (vCPU writes) OR'ed with the guest memory bitmap
//! that vm-memory keeps for device writes (virtio DMA).

use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

use ferry_arch::GuestMemory;

use crate::error::VmmError;
use crate::memory::set_dirty_logging;

/// One bitmap word per 64 pages, per memory region (region order = KVM slot order).
pub type DirtyBitmaps = Vec<Vec<u64>>;

/// Dirty logging for the duration of a migration; logging stops when dropped.
pub struct DirtyLog<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemory,
}

impl<'a> DirtyLog<'a> {
    /// Turns on KVM dirty logging for every slot and clears the device-write bitmaps.
    pub fn start(vm: &'a VmFd, mem: &'a GuestMemory) -> Result<Self, VmmError> {
        set_dirty_logging(vm, mem, true)?;
        for region in mem.iter() {
            device_bitmap(region).reset();
        }
        Ok(Self { vm, mem })
    }

    /// Pages dirtied since the last call (or since `start`), and resets the logs.
    pub fn fetch(&self) -> Result<DirtyBitmaps, VmmError> {
        let mut maps = Vec::new();
        for (slot, region) in self.mem.iter().enumerate() {
            let mut kvm = self
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|e| VmmError::Kvm("KVM_GET_DIRTY_LOG", e))?;
            let device = device_bitmap(region).get_and_reset();
            for (word, dev) in kvm.iter_mut().zip(device) {
                *word |= dev;
            }
            maps.push(kvm);
        }
        Ok(maps)
    }
}

impl Drop for DirtyLog<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_dirty_logging(self.vm, self.mem, false) {
            log::warn!("turning dirty logging off: {e}");
        }
    }
}

/// The bitmap vm-memory marks when devices write guest memory through its API.
fn device_bitmap(region: &GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    MmapRegion::bitmap(region)
}

/// Number of set bits.
pub fn count_dirty(maps: &DirtyBitmaps) -> u64 {
    maps.iter()
        .flat_map(|m| m.iter())
        .map(|w| u64::from(w.count_ones()))
        .sum()
}
