//! Global descriptor table entries for the boot GDT.

use kvm_bindings::kvm_segment;

/// Packs a segment descriptor: `flags` holds the access byte in bits 0..8 and the G/DB/L/AVL
/// nibble in bits 12..16, as in the Intel SDM's descriptor layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code, present, ring 0, 4 KiB granular.
pub const CODE64: u16 = 0xa09b;
/// 32-bit code, present, ring 0, 4 KiB granular (PVH entry).
pub const CODE32: u16 = 0xc09b;
/// Data, present, writable, 4 KiB granular.
pub const DATA: u16 = 0xc093;
/// Busy 32/64-bit TSS.
pub const TSS: u16 = 0x808b;

/// Expands a descriptor into the form KVM's sregs want for the selector at GDT `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if present == 0 { 1 } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_descriptors_encode_like_the_sdm_says() {
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn decodes_back_into_kvm_segments() {
        let seg = kvm_segment_from_gdt(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!(seg.selector, 8);
        assert_eq!((seg.l, seg.db, seg.g, seg.present, seg.s), (1, 0, 1, 1, 1));
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        let tss = kvm_segment_from_gdt(gdt_entry(TSS, 0x1000, 0x67), 3);
        // TSS flags are 4 KiB granular, so the limit scales by pages.
        assert_eq!(
            (tss.base, tss.limit, tss.g, tss.s, tss.type_),
            (0x1000, 0x67fff, 1, 0, 0xb)
        );
    }
}
