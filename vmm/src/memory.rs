//! Guest memory: anonymous mappings (untouched until the guest uses them, so a large guest costs
//! nothing at start), one KVM memory slot per region, and dirty-page logging for migration.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use ferry_arch::layout::{ram_regions, MAX_MEMORY};
use ferry_arch::GuestMemory;

use crate::error::VmmError;

/// Maps `size` bytes of guest RAM according to the x86_64 layout.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, VmmError> {
    let size_mib = size >> 20;
    if !((16 << 20)..=MAX_MEMORY).contains(&size) || !size.is_multiple_of(2 << 20) {
        return Err(VmmError::Config(format!(
            "guest memory must be a multiple of 2 MiB between 16 MiB and {} GiB, not {size_mib} MiB",
            MAX_MEMORY >> 30
        )));
    }
    let host = host_memory_bytes();
    if size > host {
        return Err(VmmError::Memory {
            size_mib,
            reason: format!("the host has only {} MiB of RAM and swap", host >> 20),
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(|e| VmmError::Memory {
        size_mib,
        reason: e.to_string(),
    })
}

/// Total RAM plus swap of the host (upper bound on what a guest may be given).
fn host_memory_bytes() -> u64 {
    // SAFETY: sysinfo fills the struct we pass and has no other effect.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64 + info.totalswap as u64).saturating_mul(u64::from(info.mem_unit))
}

/// Registers every region with KVM as slots 0..n, with dirty logging when asked.
pub fn register_memory(vm: &VmFd, mem: &GuestMemory, log_dirty: bool) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        set_slot(vm, slot as u32, region, log_dirty)?;
    }
    Ok(())
}

/// Turns dirty logging on or off on every slot (live migration toggles it).
pub fn set_dirty_logging(vm: &VmFd, mem: &GuestMemory, enabled: bool) -> Result<(), VmmError> {
    register_memory(vm, mem, enabled)
}

fn set_slot(
    vm: &VmFd,
    slot: u32,
    region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
    log_dirty: bool,
) -> Result<(), VmmError> {
    let desc = kvm_userspace_memory_region {
        slot,
        flags: if log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the region's mapping lives as long as the GuestMemory, which the VM keeps until the
    // VM fd is closed; KVM only accesses it through that mapping.
    unsafe { vm.set_user_memory_region(desc) }
        .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_sizes_out_of_range_or_unaligned() {
        for bad in [0u64, 8 << 20, (64 << 20) + 4096, MAX_MEMORY * 2] {
            assert!(create_guest_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_the_layout_lazily() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
