//! ACPI tables that describe ferry's machine to a guest, built with rust-vmm's `acpi_tables`.
//!
//! Distribution kernels find platform devices through ACPI, not through the kernel command line
//! (Debian builds `virtio_mmio` without `virtio_mmio.device=` support), and power off through it.
//! The machine is "hardware-reduced" ACPI (no PM1 blocks, no SCI, no legacy fixed buttons):
//!
//! ```text
//! 0xe0000  RSDP ── XSDT ──┬── FADT  HW_REDUCED_ACPI; sleep control/status and reset registers on
//!                         │         I/O ports (see `devices::legacy::AcpiPm`); X_DSDT ──┐
//!                         ├── MADT  one local APIC per vCPU, the IOAPIC (GSI base 0)   │
//!                         └─────────────────────────────────────────────────── DSDT ◄──┘
//!                                   \_SB.COM1 (PNP0501: 0x3f8, IRQ 4), \_SB.PS2K (PNP0303:
//!                                   the i8042, IRQ 1), \_SB.Vnnn (LNRO0005: one virtio-mmio
//!                                   window + interrupt each), \_SB.GED_ (ACPI0013, IRQ 23) and
//!                                   \_SB.PWRB (PNP0C0C), \_S5_
//! ```
//!
//! The power button: a hardware-reduced machine has no fixed power button and no SCI, so the
//! button is a control-method device (`PNP0C0C`) that a Generic Event Device notifies. ferry
//! latches the event in the GED event register ([`GED_EVENT_PORT`]) and raises the GED's
//! interrupt; the guest's ACPI interpreter runs the GED's `_EVT`, which reads (and so clears) the
//! register and sends `Notify (PWRB, 0x80)`: Linux's `button` driver reports KEY_POWER.
//!
//! The tables live in the BIOS area 0xe0000–0xfffff, where Linux also scans for the RSDP; its
//! address is handed over in the PVH start info and the zero page too. No MADT interrupt source
//! override is written: KVM's default GSI routing wires ISA IRQ n to IOAPIC pin n (the PIT on pin
//! 0), which is what a guest assumes without overrides, and what the MP table says as well.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};

use crate::layout::{GED_IRQ, IOAPIC_ADDR, LAPIC_ADDR, SERIAL_IRQ};

/// Where the RSDP goes (the start of the area Linux scans for it).
pub const RSDP_ADDR: u64 = 0xe0000;
/// End (exclusive) of the area the tables may use.
pub const TABLES_END: u64 = 0x10_0000;
/// I/O port of the sleep control register (write `SLP_TYP << 2 | SLP_EN`).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// I/O port of the sleep status register (reads 0: the guest never wakes from S5).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// I/O port of the reset register; writing [`RESET_VALUE`] resets (ends) the VM.
pub const RESET_PORT: u16 = 0x602;
pub const RESET_VALUE: u8 = 1;
// The three registers are consecutive ports of one device.
const _: () = assert!(SLEEP_STATUS_PORT == SLEEP_CONTROL_PORT + 1);
const _: () = assert!(RESET_PORT == SLEEP_CONTROL_PORT + 2);
/// I/O port of the GED event register: pending events, cleared by the read (`_EVT` reads it).
pub const GED_EVENT_PORT: u16 = 0x603;
const _: () = assert!(GED_EVENT_PORT == SLEEP_CONTROL_PORT + 3);
/// The power button's bit in the GED event register.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;
/// `SLP_TYP` of S5 (soft off) in `\_S5_`, and so in the value written to the control register.
pub const S5_SLEEP_TYPE: u8 = 5;
/// `SLP_EN` in the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;

const OEM_ID: [u8; 6] = *b"FERRY ";
const OEM_TABLE_ID: [u8; 8] = *b"FERRYVM ";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: an 8042 is present (bit 1; ferry's i8042 has a keyboard), no VGA
/// (bit 2), no MSI (bit 3: there is no PCI), no CMOS RTC (bit 5).
const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5);

/// A virtio-mmio device as the DSDT announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// Why no tables could be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("the ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    #[error("a virtio-mmio window at {0:#x} does not fit a 32-bit ACPI descriptor")]
    AddressTooHigh(u64),
}

/// The tables, each with the guest-physical address it must be written at.
#[derive(Debug)]
pub struct AcpiTables {
    pub rsdp_addr: u64,
    pub blobs: Vec<(u64, Vec<u8>)>,
}

/// Builds every table for `cpus` vCPUs (APIC ids 0..cpus) and the virtio-mmio `devices`.
pub fn build(cpus: u8, devices: &[MmioDevice]) -> Result<AcpiTables, AcpiError> {
    let mut blobs = Vec::new();
    // The RSDP is 36 bytes; the tables follow, 16-byte aligned.
    let mut next = RSDP_ADDR + 64;
    let mut place = |bytes: Vec<u8>, blobs: &mut Vec<(u64, Vec<u8>)>| {
        let at = next;
        next = (at + bytes.len() as u64).next_multiple_of(16);
        blobs.push((at, bytes));
        at
    };

    let dsdt_addr = place(dsdt(devices)?, &mut blobs);
    let fadt_addr = place(to_bytes(&fadt(dsdt_addr)), &mut blobs);
    let madt_addr = place(to_bytes(&madt(cpus)), &mut blobs);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(to_bytes(&xsdt), &mut blobs);
    if next > TABLES_END {
        return Err(AcpiError::TooLarge(next - RSDP_ADDR));
    }
    blobs.push((RSDP_ADDR, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(AcpiTables {
        rsdp_addr: RSDP_ADDR,
        blobs,
    })
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // Power and sleep buttons, if any, are control-method devices in the DSDT.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    builder.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    builder.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    builder.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    builder.reset_reg = io_register(RESET_PORT);
    builder.reset_value = RESET_VALUE;
    builder.finalize()
}

fn madt(cpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The MP table gives the IOAPIC the id after the last CPU; keep the two descriptions equal.
    madt.add_structure(IoApic::new(cpus, IOAPIC_ADDR as u32, 0));
    madt
}

/// The DSDT: the serial port, the keyboard controller, every virtio-mmio device, the power button
/// with its event device, and the S5 sleep state.
fn dsdt(devices: &[MmioDevice]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    let ged = GedAml;
    let mut virtio = Vec::with_capacity(devices.len());
    for (index, dev) in devices.iter().enumerate() {
        let base = u32::try_from(dev.base).map_err(|_| AcpiError::AddressTooHigh(dev.base))?;
        let size = u32::try_from(dev.size).map_err(|_| AcpiError::AddressTooHigh(dev.base))?;
        virtio.push(VirtioAml {
            name: format!("V{index:03X}"),
            uid: index as u32,
            window: aml::Memory32Fixed::new(true, base, size),
            // Edge-triggered, active high: ferry signals these lines through irqfds.
            irq: aml::Interrupt::new(true, true, false, false, dev.irq),
        });
    }
    let mut children: Vec<&dyn Aml> = vec![&COM1, &KEYBOARD];
    children.extend(virtio.iter().map(|v| v as &dyn Aml));
    children.push(&POWER_BUTTON);
    children.push(&ged);
    aml::Scope::new("_SB_".into(), children).to_aml_bytes(&mut body);

    let s5_type = S5_SLEEP_TYPE;
    let s5 = aml::Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    Ok(table.as_slice().to_vec())
}

/// A legacy device the guest binds by its EISA id (`_HID`), with its fixed I/O ports (base,
/// length) and interrupt in `_CRS`; no `_CRS` when it has neither.
struct PnpDeviceAml {
    name: &'static str,
    eisa_id: &'static str,
    ports: &'static [(u16, u8)],
    irq: Option<u32>,
}

/// The 16550 UART at COM1 (`PNP0501`), so an ACPI guest binds its serial driver from the table.
const COM1: PnpDeviceAml = PnpDeviceAml {
    name: "COM1",
    eisa_id: "PNP0501",
    ports: &[(0x3f8, 8)],
    irq: Some(SERIAL_IRQ),
};

/// The i8042 with its keyboard (`PNP0303`: data 0x60, command/status 0x64, IRQ 1). With no
/// `PNP0F13` beside it, Linux knows there is no PS/2 mouse port and does not probe one.
const KEYBOARD: PnpDeviceAml = PnpDeviceAml {
    name: "PS2K",
    eisa_id: "PNP0303",
    ports: &[(0x60, 1), (0x64, 1)],
    irq: Some(1),
};

/// The power button, a control-method device the GED notifies.
const POWER_BUTTON: PnpDeviceAml = PnpDeviceAml {
    name: "PWRB",
    eisa_id: "PNP0C0C",
    ports: &[],
    irq: None,
};

impl Aml for PnpDeviceAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid = aml::EISAName::new(self.eisa_id);
        let ports: Vec<aml::IO> = self
            .ports
            .iter()
            .map(|&(base, len)| aml::IO::new(base, base, 1, len))
            .collect();
        let irq = self
            .irq
            .map(|n| aml::Interrupt::new(true, true, false, false, n));
        let mut resources: Vec<&dyn Aml> = ports.iter().map(|p| p as &dyn Aml).collect();
        if let Some(irq) = &irq {
            resources.push(irq);
        }
        let crs = aml::ResourceTemplate::new(resources);
        let hid_name = aml::Name::new("_HID".into(), &hid);
        let uid_name = aml::Name::new("_UID".into(), &aml::ZERO);
        let crs_name = aml::Name::new("_CRS".into(), &crs);
        let mut children: Vec<&dyn Aml> = vec![&hid_name, &uid_name];
        if !self.ports.is_empty() || self.irq.is_some() {
            children.push(&crs_name);
        }
        aml::Device::new(self.name.into(), children).to_aml_bytes(sink);
    }
}

/// The Generic Event Device (`ACPI0013`): its interrupt makes the guest run `_EVT`, which reads
/// the event register and notifies the power button when its bit is set.
struct GedAml;

impl Aml for GedAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid: &'static str = "ACPI0013";
        let port = u64::from(GED_EVENT_PORT);
        let length = 1u8;
        let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
        let crs = aml::ResourceTemplate::new(vec![&irq]);
        let region =
            aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &port, &length);
        let field = aml::Field::new(
            "GDST".into(),
            aml::FieldAccessType::Byte,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::Preserve,
            vec![aml::FieldEntry::Named(*b"GDAT", 8)],
        );
        let events = aml::Local(0);
        let register = aml::Path::new("GDAT");
        let read = aml::Store::new(&events, &register);
        let button_bit = GED_EVENT_POWER_BUTTON;
        let masked = aml::And::new(&aml::ZERO, &events, &button_bit);
        let pressed = aml::Equal::new(&masked, &button_bit);
        let notify_code = 0x80u8;
        let button = aml::Path::new("\\_SB_.PWRB");
        let notify = aml::Notify::new(&button, &notify_code);
        let on_button = aml::If::new(&pressed, vec![&notify]);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_button]);
        aml::Device::new(
            "GED_".into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_CRS".into(), &crs),
                &region,
                &field,
                &evt,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// One `LNRO0005` device: the ACPI id Linux's virtio_mmio driver matches.
struct VirtioAml {
    name: String,
    uid: u32,
    window: aml::Memory32Fixed,
    irq: aml::Interrupt,
}

impl Aml for VirtioAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid: &'static str = "LNRO0005";
        let crs = aml::ResourceTemplate::new(vec![&self.window, &self.irq]);
        aml::Device::new(
            self.name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &self.uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn table_at(tables: &AcpiTables, addr: u64) -> &[u8] {
        &tables
            .blobs
            .iter()
            .find(|(at, _)| *at == addr)
            .unwrap_or_else(|| panic!("no table at {addr:#x}"))
            .1
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    const DEVICES: [MmioDevice; 2] = [
        MmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        },
        MmioDevice {
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        },
    ];

    /// RSDP → XSDT → FADT → DSDT and XSDT → MADT, every checksum valid, all inside the area.
    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let t = build(2, &DEVICES).unwrap();
        assert_eq!(t.rsdp_addr, RSDP_ADDR);
        for (at, bytes) in &t.blobs {
            assert!(*at >= RSDP_ADDR && at + bytes.len() as u64 <= TABLES_END);
        }
        let rsdp = table_at(&t, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
        let sigs: Vec<&[u8]> = entries.iter().map(|a| &table_at(&t, *a)[..4]).collect();
        assert_eq!(sigs, [b"FACP".as_slice(), b"APIC".as_slice()]);
        for a in &entries {
            let table = table_at(&t, *a);
            assert_eq!(u32_at(table, 4) as usize, table.len());
            assert_eq!(sum(table), 0);
        }
        let fadt = table_at(&t, entries[0]);
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let dsdt = table_at(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
        assert_eq!(sum(dsdt), 0);
        // Sleep control register: system I/O, byte access, at the PM port.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_lists_each_cpu_and_the_ioapic() {
        let t = build(3, &[]).unwrap();
        let rsdp = table_at(&t, RSDP_ADDR);
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        let madt = table_at(&t, u64_at(xsdt, 44));
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR as u32);
        let mut off = 44;
        let (mut cpus, mut ioapics) = (Vec::new(), Vec::new());
        while off < madt.len() {
            let (kind, len) = (madt[off], usize::from(madt[off + 1]));
            match kind {
                0 => cpus.push((madt[off + 3], u32_at(madt, off + 4))),
                1 => ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8))),
                other => panic!("unexpected MADT entry {other}"),
            }
            off += len;
        }
        assert_eq!(cpus, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapics, vec![(3, IOAPIC_ADDR as u32, 0)]);
    }

    /// Each virtio device appears as `LNRO0005` with its window and interrupt, in order.
    #[test]
    fn dsdt_describes_every_virtio_device_serial_and_s5() {
        let t = build(1, &DEVICES).unwrap();
        let dsdt = t
            .blobs
            .iter()
            .map(|(_, b)| b.as_slice())
            .find(|b| &b[..4] == b"DSDT")
            .unwrap();
        let hid = b"\x0dLNRO0005\x00";
        let found: Vec<usize> = (0..dsdt.len() - hid.len())
            .filter(|&i| &dsdt[i..i + hid.len()] == hid)
            .collect();
        assert_eq!(found.len(), 2);
        for (dev, at) in DEVICES.iter().zip(&found) {
            let rest = &dsdt[*at..];
            let mem = rest
                .windows(3)
                .position(|w| w == [0x86, 0x09, 0x00])
                .unwrap();
            assert_eq!(u32_at(rest, mem + 4), dev.base as u32);
            assert_eq!(u32_at(rest, mem + 8), dev.size as u32);
            let irq = rest.iter().position(|&b| b == 0x89).unwrap();
            assert_eq!(rest[irq + 3] & 0b11, 0b11, "consumer, edge-triggered");
            assert_eq!(u32_at(rest, irq + 5), dev.irq);
        }
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // PNP0501 as an EISA id: 0x0105d041.
        assert!(dsdt.windows(4).any(|w| w == 0x0105_d041u32.to_le_bytes()));
    }

    /// The DSDT's AML is what ACPICA (the interpreter Linux uses) reads: `iasl` disassembles it
    /// without errors into the devices and the power button's `_EVT` method.
    #[test]
    fn dsdt_disassembles_with_acpica_into_the_expected_objects() {
        let t = build(2, &DEVICES).unwrap();
        let dsdt = t
            .blobs
            .iter()
            .map(|(_, b)| b.as_slice())
            .find(|b| &b[..4] == b"DSDT")
            .unwrap();
        let dir = std::env::temp_dir().join(format!("ferry-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let aml = dir.join("dsdt.aml");
        std::fs::write(&aml, dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&aml)
            .output()
            .expect("iasl (Debian package acpica-tools; .ci/run installs it)");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "iasl -d failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let compact: String = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "Device (COM1)",
            "EisaId (\"PNP0501\")",
            "Device (PS2K)",
            "EisaId (\"PNP0303\")",
            "Device (V000)",
            "Device (V001)",
            "Name (_HID, \"LNRO0005\")",
            "0x00000017,",
            "Device (PWRB)",
            "EisaId (\"PNP0C0C\")",
            "Device (GED)",
            "Name (_HID, \"ACPI0013\"",
            "OperationRegion (GDST, SystemIO, 0x0603, One)",
            "Method (_EVT, 1, Serialized)",
            "If (((Local0 & One) == One))",
            "Notify (\\_SB.PWRB, 0x80)",
            "Name (_S5, Package (0x04)",
        ] {
            assert!(compact.contains(want), "{want:?} missing in:\n{dsl}");
        }
    }

    #[test]
    fn a_window_above_4_gib_is_refused() {
        let high = [MmioDevice {
            base: 1 << 32,
            size: 0x1000,
            irq: 5,
        }];
        assert_eq!(
            build(1, &high).unwrap_err(),
            AcpiError::AddressTooHigh(1 << 32)
        );
    }
}
