//! Guest memory: anonymous mappings (untouched until the guest uses them, so a large guest costs
//! nothing at start), one KVM memory slot per region, and dirty-page logging for migration.
//!
//! `huge_pages: "2M"` maps hugetlbfs pages instead (`MAP_HUGETLB`, without `MAP_NORESERVE`):
//! the kernel reserves every page at mmap time, so a host without enough free huge pages fails
//! the start with a clear error rather than killing the guest with SIGBUS at its first touch of
//! a page nobody reserved. `"Transparent"` keeps ordinary pages and advises the kernel to back
//! them with transparent huge pages.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use ferry_api::HugePages;
use ferry_arch::layout::{ram_regions, MAX_MEMORY};
use ferry_arch::GuestMemory;

use crate::error::VmmError;

/// Size of a hugetlbfs page ferry maps (`huge_pages: "2M"`).
const HUGE_PAGE: u64 = 2 << 20;

/// Maps `size` bytes of guest RAM according to the x86_64 layout, backed as `huge_pages` says.
pub fn create_guest_memory(size: u64, huge_pages: HugePages) -> Result<GuestMemory, VmmError> {
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
    let memory = match huge_pages {
        HugePages::Hugetlb2M => hugetlb_memory(&ranges, size_mib)?,
        HugePages::None | HugePages::Transparent => {
            GuestMemory::from_ranges(&ranges).map_err(|e| VmmError::Memory {
                size_mib,
                reason: e.to_string(),
            })?
        }
    };
    if huge_pages == HugePages::Transparent {
        advise_huge_pages(&memory);
    }
    Ok(memory)
}

/// Guest memory on reserved 2 MiB hugetlbfs pages.
fn hugetlb_memory(
    ranges: &[(GuestAddress, usize)],
    size_mib: u64,
) -> Result<GuestMemory, VmmError> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        debug_assert!((len as u64).is_multiple_of(HUGE_PAGE));
        let region = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(true)
            .build()
            .map_err(|e| VmmError::Memory {
                size_mib,
                reason: format!(
                    "2 MiB huge pages (huge_pages \"2M\"): {e}; {} (reserve more with \
                     `echo N > /proc/sys/vm/nr_hugepages`)",
                    huge_pages_free()
                ),
            })?;
        let region = GuestRegionMmap::new(region, addr).ok_or_else(|| VmmError::Memory {
            size_mib,
            reason: format!("region at {:#x} overflows the address space", addr.0),
        })?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| VmmError::Memory {
        size_mib,
        reason: e.to_string(),
    })
}

/// What `/proc/meminfo` says about free 2 MiB huge pages, for error messages.
fn huge_pages_free() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match (field("HugePages_Free:"), field("Hugepagesize:")) {
        (Some(free), Some(size)) => format!("the host has {free} free huge pages of {size}"),
        _ => "the host reports no huge pages".to_string(),
    }
}

/// Advises the kernel to back guest memory with transparent huge pages (fewer page faults and
/// TLB misses); failure only loses the optimisation.
pub fn advise_huge_pages(memory: &GuestMemory) {
    for region in memory.iter() {
        // SAFETY: advice on our own anonymous mapping; it changes no contents.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            log::debug!("MADV_HUGEPAGE: {}", std::io::Error::last_os_error());
        }
    }
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
            assert!(create_guest_memory(bad, HugePages::None).is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_the_layout_lazily() {
        let mem = create_guest_memory(64 << 20, HugePages::None).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
