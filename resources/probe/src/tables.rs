//! Discovery from firmware tables: processors from the Intel MultiProcessor Specification 1.4
//! table (floating pointer `_MP_` + configuration table `PCMP`) or the ACPI MADT (`APIC`), and
//! virtio-mmio devices from the ACPI DSDT (`LNRO0005` devices), both reached from the RSDP.

use crate::bootinfo::{u16_at, u32_at, u64_at, PhysMem};
use crate::cmdline::VirtioMmioDev;

/// Most CPUs recorded.
pub const MAX_CPUS: usize = 256;

/// Where the CPU list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// No table found: the boot CPU alone.
    None,
    /// Intel MP table.
    MpTable,
    /// ACPI MADT.
    Madt,
}

/// The enabled CPUs' local APIC ids, in table order.
#[derive(Clone, Copy, Debug)]
pub struct CpuList {
    /// APIC ids, `count` valid.
    pub ids: [u8; MAX_CPUS],
    /// Number of enabled CPUs found.
    pub count: usize,
    /// The table they came from.
    pub source: CpuSource,
    /// The boot processor's APIC id, when the table says (MP table BP flag).
    pub bsp: Option<u8>,
}

impl Default for CpuList {
    fn default() -> Self {
        CpuList {
            ids: [0; MAX_CPUS],
            count: 0,
            source: CpuSource::None,
            bsp: None,
        }
    }
}

impl CpuList {
    fn push(&mut self, id: u8) {
        if self.count < MAX_CPUS && !self.ids().contains(&id) {
            self.ids[self.count] = id;
            self.count += 1;
        }
    }

    /// The recorded APIC ids.
    pub fn ids(&self) -> &[u8] {
        &self.ids[..self.count]
    }

    /// The CPU count to report: at least 1 (the CPU running this code).
    pub fn cpus(&self) -> usize {
        self.count.max(1)
    }
}

/// Whether the bytes sum to zero modulo 256 (MP and ACPI checksum rule).
pub fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// Finds the CPUs: MP table first, then the MADT (RSDP from `rsdp_hint` when non-zero, else
/// the BIOS area scan), else an empty list.
pub fn discover_cpus(mem: &dyn PhysMem, rsdp_hint: u64) -> CpuList {
    let mut list = CpuList::default();
    if let Some(fp) = find_mp_floating(mem) {
        if parse_mp(mem, fp, &mut list) && list.count > 0 {
            list.source = CpuSource::MpTable;
            return list;
        }
    }
    list = CpuList::default();
    let rsdp = if rsdp_hint != 0 {
        Some(rsdp_hint)
    } else {
        find_rsdp(mem)
    };
    if let Some(rsdp) = rsdp {
        if parse_madt(mem, rsdp, &mut list) && list.count > 0 {
            list.source = CpuSource::Madt;
            return list;
        }
    }
    CpuList::default()
}

/// Scans `[start, start + len)` on 16-byte boundaries for a 16-byte-multiple structure with
/// signature `sig`, `units` paragraphs long, whose checksum is valid.
fn scan(mem: &dyn PhysMem, start: u64, len: usize, sig: &[u8], size: usize) -> Option<u64> {
    let area = mem.slice(start, len)?;
    (0..len.saturating_sub(size - 1))
        .step_by(16)
        .find(|&off| &area[off..off + sig.len()] == sig && checksum_ok(&area[off..off + size]))
        .map(|off| start + off as u64)
}

/// Searches the MP floating pointer in the first KiB of the EBDA (segment at 0x40e), the last
/// KiB of base memory (0x9fc00) and the BIOS ROM area 0xf0000-0xfffff.
pub fn find_mp_floating(mem: &dyn PhysMem) -> Option<u64> {
    let ebda = mem
        .slice(0x40e, 2)
        .map_or(0, |b| u64::from(u16_at(b, 0)) << 4);
    if (0x400..0xa0000).contains(&ebda) {
        if let Some(a) = scan(mem, ebda, 1024, b"_MP_", 16) {
            return Some(a);
        }
    }
    scan(mem, 0x9fc00, 1024, b"_MP_", 16).or_else(|| scan(mem, 0xf0000, 0x10000, b"_MP_", 16))
}

/// Parses the MP configuration table the floating pointer at `fp` names, recording enabled
/// processor entries. Returns false when the table is missing or malformed.
pub fn parse_mp(mem: &dyn PhysMem, fp: u64, list: &mut CpuList) -> bool {
    let Some(fps) = mem.slice(fp, 16) else {
        return false;
    };
    let table = u64::from(u32_at(fps, 4));
    if table == 0 {
        // A "default configuration" (feature byte 1 non-zero): two processors, ids 0 and 1.
        if fps[11] == 0 {
            return false;
        }
        list.push(0);
        list.push(1);
        list.bsp = Some(0);
        return true;
    }
    let Some(hdr) = mem.slice(table, 44) else {
        return false;
    };
    let len = usize::from(u16_at(hdr, 4));
    if &hdr[..4] != b"PCMP" || len < 44 {
        return false;
    }
    let Some(t) = mem.slice(table, len) else {
        return false;
    };
    if !checksum_ok(t) {
        return false;
    }
    let count = usize::from(u16_at(t, 34));
    let mut off = 44;
    for _ in 0..count {
        let Some(&kind) = t.get(off) else {
            return false;
        };
        let size = match kind {
            0 => 20,
            1..=4 => 8,
            _ => return false,
        };
        let Some(e) = t.get(off..off + size) else {
            return false;
        };
        if kind == 0 && e[3] & 1 != 0 {
            list.push(e[1]);
            if e[3] & 2 != 0 {
                list.bsp = Some(e[1]);
            }
        }
        off += size;
    }
    true
}

/// Scans the BIOS area 0xe0000-0xfffff for the ACPI RSDP ("RSD PTR ", 20-byte checksum).
pub fn find_rsdp(mem: &dyn PhysMem) -> Option<u64> {
    scan(mem, 0xe0000, 0x20000, b"RSD PTR ", 20)
}

/// Reads the ACPI table at `addr` if its signature and checksum are valid.
fn acpi_table<'m>(mem: &'m dyn PhysMem, addr: u64, sig: Option<&[u8]>) -> Option<&'m [u8]> {
    let hdr = mem.slice(addr, 36)?;
    if sig.is_some_and(|s| &hdr[..4] != s) {
        return None;
    }
    let len = u32_at(hdr, 4) as usize;
    if !(36..=1 << 20).contains(&len) {
        return None;
    }
    let t = mem.slice(addr, len)?;
    checksum_ok(t).then_some(t)
}

/// Follows the RSDP at `rsdp` to the XSDT (revision >= 2) or RSDT and returns the table with
/// signature `sig` it lists.
fn find_acpi_table<'m>(mem: &'m dyn PhysMem, rsdp: u64, sig: &[u8]) -> Option<&'m [u8]> {
    let r = mem.slice(rsdp, 20)?;
    if &r[..8] != b"RSD PTR " || !checksum_ok(r) {
        return None;
    }
    let (root, entry_size) = match mem.slice(rsdp, 36) {
        Some(r2) if r2[15] >= 2 && u64_at(r2, 24) != 0 && checksum_ok(r2) => (u64_at(r2, 24), 8),
        _ => (u64::from(u32_at(r, 16)), 4),
    };
    let root_sig: &[u8] = if entry_size == 8 { b"XSDT" } else { b"RSDT" };
    let root = acpi_table(mem, root, Some(root_sig))?;
    root[36..]
        .chunks_exact(entry_size)
        .map(|e| {
            if entry_size == 8 {
                u64_at(e, 0)
            } else {
                u64::from(u32_at(e, 0))
            }
        })
        .find_map(|a| acpi_table(mem, a, Some(sig)))
}

/// The DSDT named by the FADT (its 64-bit `X_DSDT` when set, else `DSDT`).
pub fn find_dsdt(mem: &dyn PhysMem, rsdp: u64) -> Option<&[u8]> {
    let fadt = find_acpi_table(mem, rsdp, b"FACP")?;
    let x_dsdt = if fadt.len() >= 148 {
        u64_at(fadt, 140)
    } else {
        0
    };
    let addr = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(u32_at(fadt, 40))
    };
    acpi_table(mem, addr, Some(b"DSDT"))
}

/// The virtio-mmio devices a DSDT describes, in table order, into `out`; returns how many. A
/// device is the string `_HID` "LNRO0005"; its window is the first Memory32Fixed descriptor and
/// its interrupt the first extended interrupt descriptor after it, before the next such `_HID`.
/// This reads the resource templates of a VMM's simple DSDT, not arbitrary AML.
pub fn dsdt_virtio_devices(dsdt: &[u8], out: &mut [VirtioMmioDev]) -> usize {
    const HID: &[u8] = b"\x0dLNRO0005\x00";
    let body = dsdt.get(36..).unwrap_or_default();
    let find = |from: usize, pat: &[u8]| {
        body.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    };
    let mut count = 0;
    let mut at = find(0, HID);
    while let Some(start) = at {
        let next = find(start + HID.len(), HID);
        let end = next.unwrap_or(body.len());
        let dev = &body[start..end];
        let mem = dev.windows(3).position(|w| w == [0x86, 0x09, 0x00]);
        let irq = dev.windows(3).position(|w| w == [0x89, 0x06, 0x00]);
        if let (Some(m), Some(i), Some(slot)) = (mem, irq, out.get_mut(count)) {
            if m + 12 <= dev.len() && i + 9 <= dev.len() {
                *slot = VirtioMmioDev {
                    size: u64::from(u32_at(dev, m + 8)),
                    addr: u64::from(u32_at(dev, m + 4)),
                    irq: u32_at(dev, i + 5),
                };
                count += 1;
            }
        }
        at = next;
    }
    count
}

/// How the platform powers off through ACPI: the sleep control register's I/O port (from the
/// FADT of a hardware-reduced platform) and the S5 sleep type (from `\_S5_` in the DSDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiPowerOff {
    pub sleep_control_port: u16,
    pub s5_sleep_type: u8,
}

impl AcpiPowerOff {
    /// The byte to write: `SLP_TYP << 2 | SLP_EN`.
    pub fn command(&self) -> u8 {
        ((self.s5_sleep_type & 7) << 2) | (1 << 5)
    }
}

/// Finds the sleep control register and the S5 sleep type, when the tables offer both and the
/// register is in I/O space.
pub fn acpi_power_off(mem: &dyn PhysMem, rsdp: u64) -> Option<AcpiPowerOff> {
    let fadt = find_acpi_table(mem, rsdp, b"FACP")?;
    // SLEEP_CONTROL_REG: a Generic Address Structure at offset 244 (space id 1: system I/O).
    let gas = fadt.get(244..256)?;
    if gas[0] != 1 {
        return None;
    }
    let port = u16::try_from(u64_at(gas, 4)).ok()?;
    let dsdt = find_dsdt(mem, rsdp)?;
    let s5_type = s5_sleep_type(dsdt)?;
    Some(AcpiPowerOff {
        sleep_control_port: port,
        s5_sleep_type: s5_type,
    })
}

/// The I/O port of the power button's event register: the `SystemIO` operation region named
/// `GDST` that the Generic Event Device's `_EVT` reads (ferry's DSDT). Reads
/// `OperationRegion (GDST, SystemIO, <port>, <length>)` only, not arbitrary AML.
pub fn ged_event_port(dsdt: &[u8]) -> Option<u16> {
    const REGION: &[u8] = b"\x5b\x80GDST\x01";
    let at = dsdt.windows(REGION.len()).position(|w| w == REGION)?;
    let rest = dsdt.get(at + REGION.len()..)?;
    let port = match *rest.first()? {
        0x00 => 0,
        0x01 => 1,
        0x0a => u64::from(*rest.get(1)?),
        0x0b => u64::from(u16::from_le_bytes([*rest.get(1)?, *rest.get(2)?])),
        0x0c => u64::from(u32_at(rest.get(1..5)?, 0)),
        _ => return None,
    };
    u16::try_from(port).ok()
}

/// The first element of `Name(_S5_, Package(){ SLP_TYPa, … })` in a DSDT.
pub fn s5_sleep_type(dsdt: &[u8]) -> Option<u8> {
    let at = dsdt.windows(4).position(|w| w == b"_S5_")?;
    let rest = dsdt.get(at + 4..)?;
    // PackageOp, a one-byte PkgLength (bits 6-7 zero), NumElements, then the first element.
    if rest.first() != Some(&0x12) || rest.get(1)? & 0xc0 != 0 {
        return None;
    }
    match *rest.get(3)? {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0a => rest.get(4).copied(),
        _ => None,
    }
}

/// Follows the RSDP at `rsdp` to the XSDT (revision >= 2) or RSDT, finds the MADT and records
/// its enabled local APIC (type 0) and x2APIC (type 9, ids < 256) entries.
pub fn parse_madt(mem: &dyn PhysMem, rsdp: u64, list: &mut CpuList) -> bool {
    let Some(madt) = find_acpi_table(mem, rsdp, b"APIC") else {
        return false;
    };
    let mut off = 44;
    while off + 2 <= madt.len() {
        let (kind, len) = (madt[off], usize::from(madt[off + 1]));
        if len < 2 || off + len > madt.len() {
            break;
        }
        let e = &madt[off..off + len];
        match kind {
            0 if len >= 8 && u32_at(e, 4) & 1 != 0 => list.push(e[3]),
            9 if len >= 16 && u32_at(e, 8) & 1 != 0 => {
                if let Ok(id) = u8::try_from(u32_at(e, 4)) {
                    list.push(id);
                }
            }
            _ => {}
        }
        off += len;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootinfo::testmem::FakeMem;

    fn fix_checksum(m: &mut FakeMem, start: usize, len: usize, at: usize) {
        m.bytes[at] = 0;
        let s = m.bytes[start..start + len]
            .iter()
            .fold(0u8, |a, &x| a.wrapping_add(x));
        m.bytes[at] = 0u8.wrapping_sub(s);
    }

    /// Writes an MP floating pointer at `fp` and a table at `table` with the given processor
    /// entries (apic id, flags) plus bus, I/O APIC, I/O interrupt and local interrupt entries
    /// (the 8-byte kinds a VMM's table carries after the processors).
    fn put_mp(m: &mut FakeMem, fp: usize, table: usize, cpus: &[(u8, u8)]) {
        m.put(fp as u64, b"_MP_");
        m.put_u32(fp as u64 + 4, table as u32);
        m.bytes[fp + 8] = 1;
        m.bytes[fp + 9] = 4;
        fix_checksum(m, fp, 16, fp + 10);
        let len = 44 + 20 * cpus.len() + 4 * 8;
        m.put(table as u64, b"PCMP");
        m.put(table as u64 + 4, &(len as u16).to_le_bytes());
        m.bytes[table + 6] = 4;
        m.put(table as u64 + 34, &((cpus.len() + 4) as u16).to_le_bytes());
        m.put_u32(table as u64 + 36, 0xfee0_0000);
        for (i, (id, flags)) in cpus.iter().enumerate() {
            let e = table + 44 + 20 * i;
            m.bytes[e] = 0;
            m.bytes[e + 1] = *id;
            m.bytes[e + 2] = 0x14;
            m.bytes[e + 3] = *flags;
        }
        let bus = table + 44 + 20 * cpus.len();
        m.bytes[bus] = 1;
        m.put(bus as u64 + 2, b"ISA   ");
        m.put(bus as u64 + 8, &[2, 9, 0x11, 1, 0, 0, 0xc0, 0xfe]); // I/O APIC
        m.put(bus as u64 + 16, &[3, 0, 0, 0, 0, 4, 9, 4]); // I/O interrupt
        m.put(bus as u64 + 24, &[4, 1, 0, 0, 0, 0, 0xff, 1]); // local interrupt (NMI)
        fix_checksum(m, table, len, table + 7);
    }

    #[test]
    fn mp_table_at_9fc00() {
        let mut m = FakeMem::new(0x100000);
        put_mp(&mut m, 0x9fc00, 0x9fc10, &[(0, 3), (1, 1), (2, 0), (3, 1)]);
        let l = discover_cpus(&m, 0);
        assert_eq!(l.source, CpuSource::MpTable);
        assert_eq!(l.ids(), &[0, 1, 3]);
        assert_eq!(l.bsp, Some(0));
        assert_eq!(l.cpus(), 3);
    }

    #[test]
    fn mp_table_in_ebda_and_rom() {
        let mut m = FakeMem::new(0x100000);
        m.put(0x40e, &(0x9e00u16).to_le_bytes());
        put_mp(&mut m, 0x9e000 + 0x30, 0x9e100, &[(0, 3), (1, 1)]);
        assert_eq!(find_mp_floating(&m), Some(0x9e030));
        assert_eq!(discover_cpus(&m, 0).cpus(), 2);

        let mut m = FakeMem::new(0x100000);
        put_mp(&mut m, 0xf5a50, 0xf6000, &[(0, 3), (1, 1), (2, 1), (5, 1)]);
        assert_eq!(discover_cpus(&m, 0).ids(), &[0, 1, 2, 5]);
    }

    #[test]
    fn mp_bad_checksums_are_ignored() {
        let mut m = FakeMem::new(0x100000);
        put_mp(&mut m, 0x9fc00, 0x9fc10, &[(0, 3), (1, 1)]);
        m.bytes[0x9fc10 + 44 + 1] ^= 0x40; // corrupt table checksum
        assert_eq!(discover_cpus(&m, 0).source, CpuSource::None);
        assert_eq!(discover_cpus(&m, 0).cpus(), 1);
        let mut m = FakeMem::new(0x100000);
        put_mp(&mut m, 0x9fc00, 0x9fc10, &[(0, 3)]);
        m.bytes[0x9fc05] ^= 1; // corrupt floating pointer
        assert_eq!(find_mp_floating(&m), None);
    }

    #[test]
    fn mp_truncated_entries_are_rejected() {
        let mut m = FakeMem::new(0x100000);
        put_mp(&mut m, 0x9fc00, 0x9fc10, &[(0, 3), (1, 1)]);
        m.put(0x9fc10 + 34, &200u16.to_le_bytes()); // more entries than the table holds
        fix_checksum(&mut m, 0x9fc10, 44 + 40 + 32, 0x9fc10 + 7);
        let mut l = CpuList::default();
        assert!(!parse_mp(&m, 0x9fc00, &mut l));
    }

    /// Builds RSDP (rev 0 or 2) -> RSDT/XSDT -> [FACP dummy, MADT] at fixed addresses.
    fn put_acpi(m: &mut FakeMem, rsdp: usize, xsdt: bool, entries: &[(u8, u8, u32)]) {
        let (root, facp, madt) = (0x8_0000usize, 0x8_1000usize, 0x8_2000usize);
        m.put(rsdp as u64, b"RSD PTR ");
        m.bytes[rsdp + 15] = if xsdt { 2 } else { 0 };
        m.put_u32(rsdp as u64 + 16, root as u32);
        m.put_u32(rsdp as u64 + 20, 36);
        if xsdt {
            m.put_u64(rsdp as u64 + 24, root as u64);
        }
        fix_checksum(m, rsdp, 20, rsdp + 8);
        fix_checksum(m, rsdp, 36, rsdp + 32);
        let esz = if xsdt { 8 } else { 4 };
        let rlen = 36 + 2 * esz;
        m.put(root as u64, if xsdt { b"XSDT" } else { b"RSDT" });
        m.put_u32(root as u64 + 4, rlen as u32);
        for (i, a) in [facp, madt].iter().enumerate() {
            let at = (root + 36 + esz * i) as u64;
            if xsdt {
                m.put_u64(at, *a as u64);
            } else {
                m.put_u32(at, *a as u32);
            }
        }
        fix_checksum(m, root, rlen, root + 9);
        m.put(facp as u64, b"FACP");
        m.put_u32(facp as u64 + 4, 36);
        fix_checksum(m, facp, 36, facp + 9);
        let mlen = 44 + 8 * entries.len() + 16;
        m.put(madt as u64, b"APIC");
        m.put_u32(madt as u64 + 4, mlen as u32);
        for (i, (kind, id, flags)) in entries.iter().enumerate() {
            let e = madt + 44 + 8 * i;
            m.bytes[e] = *kind;
            m.bytes[e + 1] = 8;
            m.bytes[e + 2] = i as u8;
            m.bytes[e + 3] = *id;
            m.put_u32(e as u64 + 4, *flags);
        }
        // One x2APIC entry (type 9), enabled, id 7.
        let e = madt + 44 + 8 * entries.len();
        m.bytes[e] = 9;
        m.bytes[e + 1] = 16;
        m.put_u32(e as u64 + 4, 7);
        m.put_u32(e as u64 + 8, 1);
        fix_checksum(m, madt, mlen, madt + 9);
    }

    #[test]
    fn madt_via_rsdt_scan() {
        let mut m = FakeMem::new(0x100000);
        // An I/O APIC entry (type 1) must be skipped, as must a disabled CPU.
        put_acpi(
            &mut m,
            0xf0010,
            false,
            &[(0, 0, 1), (0, 1, 1), (1, 9, 0), (0, 2, 0)],
        );
        let l = discover_cpus(&m, 0);
        assert_eq!(l.source, CpuSource::Madt);
        assert_eq!(l.ids(), &[0, 1, 7]);
    }

    #[test]
    fn madt_via_xsdt_hint() {
        let mut m = FakeMem::new(0x100000);
        put_acpi(&mut m, 0x9000, true, &[(0, 0, 1), (0, 4, 1)]);
        assert_eq!(discover_cpus(&m, 0x9000).ids(), &[0, 4, 7]);
        // Without the hint the RSDP at 0x9000 is not found (outside the BIOS area).
        assert_eq!(discover_cpus(&m, 0).cpus(), 1);
    }

    #[test]
    fn madt_corrupt_is_ignored() {
        let mut m = FakeMem::new(0x100000);
        put_acpi(&mut m, 0xe0000, false, &[(0, 0, 1), (0, 1, 1)]);
        m.bytes[0x8_2000 + 44 + 3] = 0x55;
        assert_eq!(discover_cpus(&m, 0).source, CpuSource::None);
    }
}
