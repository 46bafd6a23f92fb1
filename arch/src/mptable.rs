//! Intel MultiProcessor Specification 1.4 table, so the guest sees N CPUs, one IOAPIC and the ISA
//! interrupt routing without ACPI. Written at [`crate::layout::MPTABLE_ADDR`] (the EBDA), where
//! guests look for the floating pointer.

use crate::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and FPU+APIC feature flags, as real firmware fills them.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LOCALINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const HEADER_LEN: usize = 44;
const FLOATING_POINTER_LEN: usize = 16;

/// Most vCPUs an MP table can describe: APIC ids are one byte and the IOAPIC takes the next id.
pub const MAX_CPUS: u8 = 254;

/// Why no table could be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("an MP table describes 1 to {MAX_CPUS} CPUs, not {0}")]
    CpuCount(u8),
}

/// Builds the floating pointer followed by the configuration table, for placement at `addr`.
pub fn build(addr: u64, cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let table_addr = addr + FLOATING_POINTER_LEN as u64;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    // ISA IRQ i is wired to IOAPIC pin i, IRQ 0 (the PIT) included: that is KVM's default GSI
    // routing, and Linux's timer check needs a route for IRQ 0 through the IOAPIC (declaring
    // pin 0 as the 8259's ExtINT left it with none and oopsed at boot unless `noapic`). The
    // 8259 reaches the BSP through LINT0 below, as on Firecracker and real boards.
    for pin in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[
            ENTRY_IOINT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    // LINT0 takes ExtINT on the BSP, LINT1 takes NMI on every CPU (0xff).
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC_REV);
    table.push(0); // checksum, patched below
    table.extend_from_slice(b"FERRY   ");
    table.extend_from_slice(b"FERRYVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + table_len);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(MPC_SPEC_REV);
    out.push(0); // checksum, patched below
    out.extend_from_slice(&[0; 5]); // feature bytes: no default configuration, no IMCR
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let image = build(0x9fc00, 4).unwrap();
        assert_eq!(&image[..4], b"_MP_");
        assert_eq!(sum(&image[..16]), 0);
        let table_ptr = u32::from_le_bytes(image[4..8].try_into().unwrap());
        assert_eq!(table_ptr, 0x9fc10);
        let table = &image[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn lists_every_cpu_with_the_first_as_bsp() {
        let image = build(0x9fc00, 3).unwrap();
        let table = &image[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 3 CPUs, 1 bus, 1 IOAPIC, 24 IO interrupts, 2 local interrupts.
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        let cpus: Vec<(u8, u8)> = table[HEADER_LEN..]
            .chunks(20)
            .take(3)
            .map(|e| {
                assert_eq!(e[0], ENTRY_PROCESSOR);
                (e[1], e[3])
            })
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
        // The IOAPIC follows the bus entry and takes the id after the last CPU.
        let ioapic = &table[HEADER_LEN + 60 + 8..HEADER_LEN + 60 + 16];
        assert_eq!(&ioapic[..2], &[ENTRY_IOAPIC, 3]);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn every_isa_irq_routes_to_its_own_ioapic_pin_as_an_ordinary_interrupt() {
        let cpus = 2u8;
        let image = build(0x9fc00, cpus).unwrap();
        let table = &image[16..];
        // After the CPUs (20 bytes each), the bus (8) and the IOAPIC (8) come the IO interrupts.
        let first = HEADER_LEN + 20 * usize::from(cpus) + 16;
        let io: Vec<&[u8]> = table[first..]
            .chunks(8)
            .take(IOAPIC_PINS as usize)
            .collect();
        for (pin, entry) in io.iter().enumerate() {
            let pin = pin as u8;
            assert_eq!(
                entry,
                &[ENTRY_IOINT, INT_TYPE_INT, 0, 0, ISA_BUS_ID, pin, cpus, pin],
                "IO interrupt entry for pin {pin}"
            );
        }
        // The 8259 reaches the BSP through LINT0 (ExtINT); NMI goes to LINT1 of every CPU.
        let local = &table[first + 8 * IOAPIC_PINS as usize..];
        assert_eq!(
            &local[..8],
            &[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]
        );
        assert_eq!(
            &local[8..16],
            &[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]
        );
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert_eq!(build(0, 0), Err(MpTableError::CpuCount(0)));
        assert_eq!(build(0, 255), Err(MpTableError::CpuCount(255)));
        assert!(build(0, MAX_CPUS).is_ok());
    }
}
