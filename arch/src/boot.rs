//! Loading a kernel, initrd and command line into guest memory and writing the boot information
//! (zero page for the Linux protocol, `hvm_start_info` for PVH).

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile,
};

use crate::layout::{
    e820_map, CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIGH_MEMORY_START, PAGE_SIZE, PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use crate::regs::BootProtocol;
use crate::GuestMemory;

/// Which entry to use when the kernel offers both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootPreference {
    /// PVH when the ELF has a PVH note, else the Linux 64-bit entry.
    #[default]
    Auto,
    /// Always the Linux 64-bit entry (ELF e_entry, or bzImage's 64-bit entry).
    Linux,
    /// Require a PVH note.
    Pvh,
}

/// Where and how the loaded kernel starts.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: u64,
    pub protocol: BootProtocol,
    /// First byte after the kernel image.
    pub end: u64,
    /// bzImage setup header, copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Why a kernel, initrd or command line could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("not a bootable kernel: neither an ELF vmlinux ({elf}) nor a bzImage ({bzimage})")]
    NotAKernel {
        elf: loader::Error,
        bzimage: loader::Error,
    },
    #[error("invalid kernel image: {0}")]
    Kernel(loader::Error),
    #[error("the kernel has no PVH entry note, but PVH boot was requested")]
    NoPvhNote,
    #[error("reading the kernel image: {0}")]
    Read(std::io::Error),
    #[error("the initrd ({size} bytes) does not fit in guest memory below the MMIO hole")]
    InitrdTooLarge { size: u64 },
    #[error("reading the initrd: {0}")]
    InitrdRead(std::io::Error),
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing boot information into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("the memory map has {0} entries, more than the boot protocol can carry")]
    MemoryMapTooLarge(usize),
}

/// Loads `kernel` (ELF vmlinux with or without PVH note, or bzImage) into `mem`.
pub fn load_kernel(
    mem: &GuestMemory,
    kernel: &mut File,
    preference: BootPreference,
) -> Result<LoadedKernel, BootError> {
    let elf_error = match Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START))) {
        Ok(result) => {
            let pvh = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                _ => None,
            };
            let (entry, protocol) = match (preference, pvh) {
                (BootPreference::Pvh, None) => return Err(BootError::NoPvhNote),
                (BootPreference::Linux, _) | (BootPreference::Auto, None) => {
                    (result.kernel_load.0, BootProtocol::Linux64)
                }
                (_, Some(pvh_entry)) => (pvh_entry, BootProtocol::Pvh),
            };
            return Ok(LoadedKernel {
                entry,
                protocol,
                end: result.kernel_end,
                setup_header: None,
            });
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)
        }
        Err(e) => return Err(BootError::Kernel(e)),
    };
    if preference == BootPreference::Pvh {
        return Err(BootError::NoPvhNote);
    }
    kernel.seek(SeekFrom::Start(0)).map_err(BootError::Read)?;
    match BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START))) {
        Ok(result) => Ok(LoadedKernel {
            // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
            entry: result.kernel_load.0 + 0x200,
            protocol: BootProtocol::Linux64,
            end: result.kernel_end,
            setup_header: result.setup_header,
        }),
        Err(bzimage) => Err(BootError::NotAKernel {
            elf: elf_error,
            bzimage,
        }),
    }
}

/// Places the initrd at the highest page-aligned address of the low RAM region that keeps it
/// above the kernel, as bootloaders do.
pub fn load_initrd<F: ReadVolatile + Seek>(
    mem: &GuestMemory,
    initrd: &mut F,
    kernel_end: u64,
) -> Result<LoadedInitrd, BootError> {
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(BootError::InitrdRead)?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(BootError::InitrdRead)?;
    let low_end = mem
        .iter()
        .next()
        .map(|region| region.start_addr().0 + region.len())
        .unwrap_or(0);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end.max(HIGH_MEMORY_START))
        .ok_or(BootError::InitrdTooLarge { size })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|e| BootError::InitrdRead(std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitrd { addr, size })
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDR))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))?;
    Ok(())
}

// SAFETY (both impls): plain-old-data structs defined by the PVH ABI; any byte pattern is valid.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
unsafe impl ByteValued for MemmapEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
unsafe impl ByteValued for ModlistEntry {}

const PVH_MAGIC: u32 = 0x336e_c578;

/// Writes `hvm_start_info`, its memory map and the initrd module entry for a PVH entry.
pub fn write_pvh_info(
    mem: &GuestMemory,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let map = e820_map(mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::MemoryMapTooLarge(map.len()));
    }
    for (i, e) in map.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        });
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP_ADDR + i as u64 * 24))?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len > 0 { CMDLINE_ADDR } else { 0 },
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_ADDR))?;
    Ok(())
}

#[derive(Clone, Copy)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is the kernel's plain-old-data zero page layout.
unsafe impl ByteValued for ZeroPage {}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// Writes the zero page for the Linux 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestMemory,
    mem_size: u64,
    cmdline_len: usize,
    setup: Option<setup_header>,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    // SAFETY: boot_params is POD; all-zero is its documented initial state.
    let mut params: boot_params = unsafe { std::mem::zeroed() };
    if let Some(hdr) = setup {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    // Read by Linux from boot protocol 2.14 on; older kernels scan the BIOS area and find it too.
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::MemoryMapTooLarge(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn temp_file(bytes: &[u8]) -> File {
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let m = mem(64 << 20);
        let mut f = temp_file(&[0x5a; 8192]);
        let err = load_kernel(&m, &mut f, BootPreference::Auto).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        let mut empty = temp_file(&[]);
        assert!(load_kernel(&m, &mut empty, BootPreference::Auto).is_err());
    }

    #[test]
    fn cmdline_is_nul_terminated_and_bounded() {
        let m = mem(1 << 20);
        write_cmdline(&m, "console=ttyS0").unwrap();
        let mut buf = [0xffu8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, &"x".repeat(CMDLINE_MAX_SIZE)),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_cmdline(&m, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let m = mem(64 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut f = temp_file(&data);
        let placed = load_initrd(&m, &mut f, 0x20_0000).unwrap();
        assert_eq!(placed.size, 10_000);
        assert_eq!(placed.addr % PAGE_SIZE, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        let mut back = vec![0u8; 10_000];
        m.read_slice(&mut back, GuestAddress(placed.addr)).unwrap();
        assert_eq!(back, data);
        let mut huge = temp_file(&vec![1u8; 3 << 20]);
        assert!(matches!(
            load_initrd(&mem(4 << 20), &mut huge, 0x20_0000),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn pvh_info_describes_memory_and_cmdline() {
        let m = mem(64 << 20);
        write_pvh_info(
            &m,
            64 << 20,
            10,
            Some(LoadedInitrd {
                addr: 0x300_0000,
                size: 5,
            }),
            Some(0xe0000),
        )
        .unwrap();
        let info: StartInfo = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        let info = info.0;
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!({ info.rsdp_paddr }, 0xe0000);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_entries as usize, e820_map(64 << 20).len());
        assert_eq!(info.nr_modules, 1);
        let last: MemmapEntry = m
            .read_obj(GuestAddress(
                PVH_MEMMAP_ADDR + (info.memmap_entries as u64 - 1) * 24,
            ))
            .unwrap();
        assert_eq!(last.0.addr + last.0.size, 64 << 20);
        let module: ModlistEntry = m.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((module.0.paddr, module.0.size), (0x300_0000, 5));
    }

    #[test]
    fn zero_page_carries_e820_and_cmdline() {
        let m = mem(64 << 20);
        write_zero_page(&m, 64 << 20, 20, None, None, Some(0xe0000)).unwrap();
        let zp: ZeroPage = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let p = zp.0;
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.e820_entries as usize, e820_map(64 << 20).len());
        let first = p.e820_table[0];
        assert_eq!(({ first.addr }, { first.r#type }), (0, 1));
    }
}
