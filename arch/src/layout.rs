//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  GDT                     0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)             0x0000_a000  PDPT
//! 0x0000_6000  PVH hvm_start_info      0x0000_b000  4 page directories (identity map of 4 GiB)
//! 0x0000_6040  PVH memory map          0x0002_0000  kernel command line
//! 0x0000_7000  zero page (boot_params) 0x0009_fc00  EBDA: MP table
//! 0x0000_8ff0  boot stack (grows down) 0x000e_0000  ACPI: RSDP, DSDT, FADT, MADT, XSDT
//!                                      0x0010_0000  kernel (high memory start)
//! 0xc000_0000 .. 0x1_0000_0000: MMIO hole (virtio-mmio devices, IOAPIC, LAPIC, TSS)
//! 0x1_0000_0000 ..: RAM above the hole when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;

pub const PAGE_SIZE: u64 = 4096;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Room for the PVH memory map before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((PVH_MODLIST_ADDR - PVH_MEMMAP_ADDR) / 24) as usize;
/// One module entry (the initrd) for PVH, just below the zero page.
pub const PVH_MODLIST_ADDR: u64 = 0x6fe0;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Page directories after PD_ADDR: each maps 1 GiB with 2 MiB pages.
pub const PD_COUNT: u64 = 4;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest kernel command line we pass, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_ADDR: u64 = EBDA_START;
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// The BIOS area below 1 MiB that holds the ACPI tables (`crate::acpi`).
pub const BIOS_AREA_START: u64 = 0xe_0000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// virtio-mmio devices are placed one page apart from here.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the real-mode TSS and one for the identity map, inside 4 GiB and
/// outside RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy IRQ of the COM1 UART.
pub const SERIAL_IRQ: u32 = 4;
/// First and last IOAPIC pins handed to virtio devices.
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 22;
/// The IOAPIC pin of the ACPI Generic Event Device (the power button; `acpi`). The last pin,
/// outside the ISA range, so no legacy driver probing a COM port or a PS/2 mouse can claim it.
pub const GED_IRQ: u32 = 23;
/// IOAPIC pins (GSIs) the MP table routes.
pub const IOAPIC_PINS: u32 = 24;

/// Highest memory size ferry accepts, bytes (matches the 64 GiB identity map a guest may build).
pub const MAX_MEMORY: u64 = 1 << 40;

/// The RAM regions for a guest of `mem_size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), mem_size - MMIO_HOLE_START),
        ]
    }
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One entry of the BIOS memory map handed to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest memory map: low RAM up to the EBDA, the EBDA reserved, the BIOS area (where the
/// ACPI tables are) reserved, RAM from 1 MiB to the end of the first region, then RAM above 4 GiB
/// if any.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: 0xa0000 - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: BIOS_AREA_START,
            size: HIGH_MEMORY_START - BIOS_AREA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_regions(mem_size) {
        let start = start.0;
        let end = start + size;
        let start = start.max(HIGH_MEMORY_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Guest address of the `index`th virtio-mmio device window.
pub fn virtio_mmio_addr(index: u32) -> u64 {
    VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE
}

// The virtio windows must start inside the MMIO hole.
const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO_HOLE_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_HOLE_START),
                (GuestAddress(1 << 32), (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn e820_accounts_for_all_ram_but_the_legacy_hole() {
        for mem in [16u64 << 20, 512 << 20, 3 << 30, 6 << 30] {
            let ram: u64 = e820_map(mem)
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, mem - (HIGH_MEMORY_START - EBDA_START), "mem {mem:#x}");
        }
        let map = e820_map(6 << 30);
        assert_eq!(map.last().map(|e| e.addr), Some(1 << 32));
    }

    #[test]
    fn virtio_windows_fit_in_the_hole_below_the_ioapic() {
        let last = virtio_mmio_addr(VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST);
        assert!(last + VIRTIO_MMIO_SIZE <= IOAPIC_ADDR);
    }
}
