//! The probe ELF as ferry and Firecracker load it: linux-loader's ELF loader must accept it,
//! place it at 1 MiB, report the PVH entry from the note and leave the 64-bit entry in e_entry.

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn probe_elf() -> Vec<u8> {
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("probe");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn linux_loader_accepts_the_probe() {
    let image = probe_elf();
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("guest memory");
    let result = Elf::load(
        &mem,
        None,
        &mut Cursor::new(&image),
        Some(GuestAddress(0x100000)),
    )
    .expect("linux-loader loads the probe");
    let entry = u64::from_le_bytes(image[0x18..0x20].try_into().unwrap());
    assert_eq!(result.kernel_load, GuestAddress(entry));
    assert!(result.kernel_end > 0x100000 && result.kernel_end < 0x800000);
    let PvhBootCapability::PvhEntryPresent(pvh) = result.pvh_boot_cap else {
        panic!("no PVH entry: {:?}", result.pvh_boot_cap);
    };
    assert!(pvh.0 > 0x100000 && pvh.0 < result.kernel_end, "{pvh:?}");
    assert_ne!(pvh.0, entry, "PVH (32-bit) and 64-bit entries differ");
    // The first bytes at 1 MiB are the exception stubs (`push $0; push $0; jmp`).
    let mut head = [0u8; 4];
    mem.read_slice(&mut head, GuestAddress(0x100000))
        .expect("read");
    assert_eq!(head, [0x6a, 0x00, 0x6a, 0x00]);
}
