//! Which guest pages changed: KVM's dirty log (vCPU writes) OR'ed with the guest memory bitmap
//! that vm-memory keeps for device writes (virtio DMA).

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, KVMIO, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_iowr_nr;

use ferry_arch::GuestMemory;

use crate::error::VmmError;
use crate::memory::set_dirty_logging;

/// One bitmap word per 64 pages, per memory region (region order = KVM slot order).
pub type DirtyBitmaps = Vec<Vec<u64>>;

/// Dirty logging for the duration of a migration; logging stops when dropped, unless the VM
/// tracks dirty pages for diff snapshots all the time.
pub struct DirtyLog<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemory,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on: reading the log does not re-protect pages;
    /// [`clear_dirty_log`] re-protects exactly the pages we are about to send.
    manual_protect: bool,
    /// Leave logging on when dropped (`track_dirty_pages`).
    keep_logging: bool,
}

impl<'a> DirtyLog<'a> {
    /// Turns on KVM dirty logging for every slot and clears the device-write bitmaps.
    pub fn start(vm: &'a VmFd, mem: &'a GuestMemory, keep_logging: bool) -> Result<Self, VmmError> {
        let manual_protect = enable_manual_protect(vm);
        set_dirty_logging(vm, mem, true)?;
        for region in mem.iter() {
            device_bitmap(region).reset();
        }
        Ok(Self {
            vm,
            mem,
            manual_protect,
            keep_logging,
        })
    }

    /// Pages dirtied since the last call (or since `start`), and resets the logs.
    pub fn fetch(&self) -> Result<DirtyBitmaps, VmmError> {
        let mut maps = Vec::new();
        for (slot, region) in self.mem.iter().enumerate() {
            let mut kvm = self
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|e| VmmError::Kvm("KVM_GET_DIRTY_LOG", e))?;
            if self.manual_protect {
                clear_dirty_log(self.vm, slot as u32, &mut kvm)?;
            }
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
        if self.keep_logging {
            return;
        }
        if let Err(e) = set_dirty_logging(self.vm, self.mem, false) {
            log::warn!("turning dirty logging off: {e}");
        }
    }
}

/// Pages dirtied since the last call (or since the VM started logging), for a diff snapshot of a
/// VM that tracks dirty pages all the time; resets the logs. Whether a migration turned manual
/// protection on is not known here, so the log is always cleared: KVM refuses the clear (EINVAL)
/// when manual protection is off, and then reading the log already re-protected the pages.
pub fn fetch_since_last_snapshot(vm: &VmFd, mem: &GuestMemory) -> Result<DirtyBitmaps, VmmError> {
    let mut maps = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let mut kvm = vm
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(|e| VmmError::Kvm("KVM_GET_DIRTY_LOG", e))?;
        match clear_dirty_log(vm, slot as u32, &mut kvm) {
            Ok(()) => {}
            Err(VmmError::Kvm(_, e)) if e.errno() == libc::EINVAL => {}
            Err(e) => return Err(e),
        }
        let device = device_bitmap(region).get_and_reset();
        for (word, dev) in kvm.iter_mut().zip(device) {
            *word |= dev;
        }
        maps.push(kvm);
    }
    Ok(maps)
}

/// Turns on manual dirty-log protection where the host has it: KVM then write-protects only the
/// pages each round actually clears, instead of the whole slot on every log read.
fn enable_manual_protect(vm: &VmFd) -> bool {
    let supported = vm.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
    if supported <= 0 {
        return false;
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
    match vm.enable_cap(&cap) {
        Ok(()) => {
            log::info!("migration: manual dirty-log protection on");
            true
        }
        Err(e) => {
            log::debug!("manual dirty-log protection unavailable: {e}");
            false
        }
    }
}

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Re-protects the pages set in `bitmap` (one slot, whole slot range).
fn clear_dirty_log(vm: &VmFd, slot: u32, bitmap: &mut [u64]) -> Result<(), VmmError> {
    let pages = (bitmap.len() * 64) as u32;
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages: pages,
        first_page: 0,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    // SAFETY: the ioctl reads `num_pages` bits from the bitmap, which is `bitmap.len() * 64`
    // bits long and lives across the call.
    let rc = unsafe { ioctl_with_mut_ref(vm, KVM_CLEAR_DIRTY_LOG(), &mut arg) };
    if rc < 0 {
        return Err(VmmError::Kvm(
            "KVM_CLEAR_DIRTY_LOG",
            kvm_ioctls::Error::last(),
        ));
    }
    Ok(())
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
