//! Boot information: the Xen PVH `hvm_start_info` and the Linux zero page (`boot_params`), read
//! through [`PhysMem`] and copied into a probe-owned [`BootInfo`] before low memory is reused.

/// Read access to guest-physical memory. The kernel implements it over the identity map,
/// refusing ranges outside known memory; host tests implement it over a byte vector.
pub trait PhysMem {
    /// The bytes at `[addr, addr + len)`, or `None` when that range may not be read.
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// Longest command line kept (longer ones are truncated).
pub const CMDLINE_MAX: usize = 2048;
/// Most memory-map entries kept.
pub const MEMMAP_MAX: usize = 64;
/// E820 / hvm_memmap type of usable RAM.
pub const E820_RAM: u32 = 1;
/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

/// How the probe was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH entry (32-bit, EBX = `hvm_start_info`).
    Pvh,
    /// Linux 64-bit boot protocol (RSI = zero page).
    Linux64,
}

/// Why boot information could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The structure could not be read at the given address.
    Unreadable,
    /// `hvm_start_info.magic` was wrong.
    BadMagic,
}

/// Boot information copied into probe-owned storage.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// The entry protocol.
    pub protocol: BootProtocol,
    /// Command-line bytes (no NUL), `cmdline_len` valid.
    pub cmdline: [u8; CMDLINE_MAX],
    /// Valid bytes in `cmdline`.
    pub cmdline_len: usize,
    /// Whether a command line pointer was present and readable.
    pub has_cmdline: bool,
    /// Memory map, `mem_count` valid.
    pub mem: [MemRegion; MEMMAP_MAX],
    /// Valid entries in `mem`.
    pub mem_count: usize,
    /// ACPI RSDP address from `hvm_start_info` (0 when not given).
    pub rsdp: u64,
}

impl BootInfo {
    /// An empty record (no command line, no memory map).
    pub const fn empty(protocol: BootProtocol) -> Self {
        BootInfo {
            protocol,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            has_cmdline: false,
            mem: [MemRegion {
                addr: 0,
                size: 0,
                kind: 0,
            }; MEMMAP_MAX],
            mem_count: 0,
            rsdp: 0,
        }
    }

    /// Reads a PVH `hvm_start_info` at `addr` (layout per Xen's `arch-x86/hvm/start_info.h`).
    pub fn from_pvh(mem: &dyn PhysMem, addr: u64) -> Result<Self, BootError> {
        let head = mem.slice(addr, 40).ok_or(BootError::Unreadable)?;
        if u32_at(head, 0) != HVM_START_MAGIC {
            return Err(BootError::BadMagic);
        }
        let version = u32_at(head, 4);
        let mut info = BootInfo::empty(BootProtocol::Pvh);
        info.rsdp = u64_at(head, 32);
        let cmdline = u64_at(head, 24);
        if cmdline != 0 {
            info.read_cmdline(mem, cmdline);
        }
        if version >= 1 {
            if let Some(ext) = mem.slice(addr + 40, 16) {
                let (map, entries) = (u64_at(ext, 0), u32_at(ext, 8) as usize);
                for i in 0..entries.min(MEMMAP_MAX) {
                    let Some(e) = mem.slice(map + 24 * i as u64, 24) else {
                        break;
                    };
                    info.push_region(u64_at(e, 0), u64_at(e, 8), u32_at(e, 16));
                }
            }
        }
        Ok(info)
    }

    /// Reads a Linux zero page (`struct boot_params`) at `addr`.
    pub fn from_linux(mem: &dyn PhysMem, addr: u64) -> Result<Self, BootError> {
        let zp = mem.slice(addr, 4096).ok_or(BootError::Unreadable)?;
        let mut info = BootInfo::empty(BootProtocol::Linux64);
        let cmdline = u64::from(u32_at(zp, 0x228)) | u64::from(u32_at(zp, 0x0c8)) << 32;
        if cmdline != 0 {
            info.read_cmdline(mem, cmdline);
        }
        let entries = usize::from(zp[0x1e8]).min(128).min(MEMMAP_MAX);
        for i in 0..entries {
            let e = &zp[0x2d0 + 20 * i..0x2d0 + 20 * (i + 1)];
            info.push_region(u64_at(e, 0), u64_at(e, 8), u32_at(e, 16));
        }
        Ok(info)
    }

    /// Copies the NUL-terminated string at `addr`, one page at a time so that the read never
    /// runs past the page holding the terminator.
    fn read_cmdline(&mut self, mem: &dyn PhysMem, addr: u64) {
        let mut at = addr;
        while self.cmdline_len < CMDLINE_MAX {
            let page_left = (0x1000 - (at & 0xfff)) as usize;
            let n = page_left.min(CMDLINE_MAX - self.cmdline_len);
            let Some(chunk) = mem.slice(at, n) else { break };
            self.has_cmdline = true;
            let end = chunk.iter().position(|&b| b == 0);
            let take = end.unwrap_or(n);
            self.cmdline[self.cmdline_len..self.cmdline_len + take].copy_from_slice(&chunk[..take]);
            self.cmdline_len += take;
            if end.is_some() {
                break;
            }
            at += n as u64;
        }
    }

    fn push_region(&mut self, addr: u64, size: u64, kind: u32) {
        if self.mem_count < MEMMAP_MAX && size != 0 {
            self.mem[self.mem_count] = MemRegion { addr, size, kind };
            self.mem_count += 1;
        }
    }

    /// The command line.
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    /// The memory map.
    pub fn regions(&self) -> &[MemRegion] {
        &self.mem[..self.mem_count]
    }

    /// Total usable RAM in bytes (sum of type-1 entries).
    pub fn usable_bytes(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == E820_RAM)
            .fold(0u64, |acc, r| acc.saturating_add(r.size))
    }

    /// Total usable RAM in MiB, rounded down.
    pub fn usable_mib(&self) -> u64 {
        self.usable_bytes() >> 20
    }

    /// Whether `[addr, addr + len)` lies inside a single usable-RAM entry.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.regions()
            .iter()
            .any(|r| r.kind == E820_RAM && addr >= r.addr && end <= r.addr.saturating_add(r.size))
    }

    /// Whether `[addr, addr + len)` lies inside a single memory-map entry of any type (firmware
    /// tables live in reserved/ACPI entries) or below 1 MiB, which every x86 VMM backs.
    pub fn is_backed(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        end <= 0x10_0000
            || self
                .regions()
                .iter()
                .any(|r| addr >= r.addr && end <= r.addr.saturating_add(r.size))
    }
}

/// Little-endian u16 at `off` (0 when out of range).
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian u32 at `off` (0 when out of range).
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian u64 at `off` (0 when out of range).
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

/// A fake guest memory for host tests: a byte vector starting at address 0, of which only
/// `[0, limit)` is readable.
#[cfg(test)]
pub(crate) mod testmem {
    extern crate std;
    use std::vec::Vec;

    pub struct FakeMem {
        pub bytes: Vec<u8>,
    }

    impl FakeMem {
        pub fn new(size: usize) -> Self {
            FakeMem {
                bytes: std::vec![0; size],
            }
        }
        pub fn put(&mut self, addr: u64, data: &[u8]) {
            self.bytes[addr as usize..addr as usize + data.len()].copy_from_slice(data);
        }
        pub fn put_u32(&mut self, addr: u64, v: u32) {
            self.put(addr, &v.to_le_bytes());
        }
        pub fn put_u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    impl super::PhysMem for FakeMem {
        fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(addr).ok()?;
            self.bytes.get(start..start.checked_add(len)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testmem::FakeMem;
    use super::*;

    #[test]
    fn pvh_start_info_with_memmap() {
        let mut m = FakeMem::new(0x10000);
        m.put_u32(0x6000, HVM_START_MAGIC);
        m.put_u32(0x6004, 1);
        m.put_u64(0x6018, 0x7000); // cmdline
        m.put_u64(0x6020, 0xe0000); // rsdp
        m.put_u64(0x6028, 0x8000); // memmap
        m.put_u32(0x6030, 3);
        m.put(0x7000, b"probe.test=boot\0junk");
        for (i, (a, s, t)) in [
            (0u64, 0x9fc00u64, 1u32),
            (0x9fc00, 0x400, 2),
            (0x100000, 0x7f00000, 1),
        ]
        .iter()
        .enumerate()
        {
            let e = 0x8000 + 24 * i as u64;
            m.put_u64(e, *a);
            m.put_u64(e + 8, *s);
            m.put_u32(e + 16, *t);
        }
        let info = BootInfo::from_pvh(&m, 0x6000).unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.cmdline(), b"probe.test=boot");
        assert!(info.has_cmdline);
        assert_eq!(info.rsdp, 0xe0000);
        assert_eq!(info.regions().len(), 3);
        assert_eq!(info.usable_bytes(), 0x9fc00 + 0x7f00000);
        assert_eq!(info.usable_mib(), 127);
        assert!(info.is_ram(0x100000, 0x1000));
        assert!(!info.is_ram(0x9fc00, 0x10));
        assert!(!info.is_ram(0x7fff000, 0x2000));
        assert!(info.is_backed(0x9fc00, 0x10));
        assert!(!info.is_backed(0x8000000, 0x10));
    }

    #[test]
    fn pvh_version0_and_bad_magic() {
        let mut m = FakeMem::new(0x8000);
        m.put_u32(0x6000, HVM_START_MAGIC);
        let info = BootInfo::from_pvh(&m, 0x6000).unwrap();
        assert!(!info.has_cmdline);
        assert_eq!(info.mem_count, 0);
        m.put_u32(0x6000, 0x1234);
        assert_eq!(
            BootInfo::from_pvh(&m, 0x6000).unwrap_err(),
            BootError::BadMagic
        );
        assert_eq!(
            BootInfo::from_pvh(&m, 0x7ff0).unwrap_err(),
            BootError::Unreadable
        );
    }

    #[test]
    fn linux_zero_page() {
        let mut m = FakeMem::new(0x30000);
        let zp = 0x7000;
        m.put_u32(zp + 0x228, 0x20000);
        m.bytes[zp as usize + 0x1e8] = 2;
        m.put_u64(zp + 0x2d0, 0);
        m.put_u64(zp + 0x2d8, 0x9fc00);
        m.put_u32(zp + 0x2e0, 1);
        m.put_u64(zp + 0x2e4, 0x100000);
        m.put_u64(zp + 0x2ec, 0x1000_0000);
        m.put_u32(zp + 0x2f4, 1);
        m.put(0x20000, b"console=ttyS0 probe.test=boot\0");
        let info = BootInfo::from_linux(&m, zp).unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64);
        assert_eq!(info.cmdline(), b"console=ttyS0 probe.test=boot");
        assert_eq!(info.usable_mib(), 256);
        assert_eq!(
            info.regions()[1],
            MemRegion {
                addr: 0x100000,
                size: 0x1000_0000,
                kind: 1
            }
        );
    }

    #[test]
    fn cmdline_without_terminator_stops_at_memory_end() {
        let mut m = FakeMem::new(0x3000);
        m.put_u32(0x1000, HVM_START_MAGIC);
        m.put_u64(0x1018, 0x2ff0);
        m.put(0x2ff0, b"0123456789abcdef");
        let info = BootInfo::from_pvh(&m, 0x1000).unwrap();
        assert_eq!(info.cmdline(), b"0123456789abcdef");
    }
}
