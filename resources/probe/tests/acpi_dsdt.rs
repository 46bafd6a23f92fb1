//! The probe finds its virtio-mmio devices in the DSDT that ferry really builds
//! (`ferry_arch::acpi`), reached from the RSDP through the XSDT and the FADT.

use ferry_arch::acpi::{self, MmioDevice};
use ferry_probe::bootinfo::PhysMem;
use ferry_probe::cmdline::VirtioMmioDev;
use ferry_probe::tables::{discover_cpus, dsdt_virtio_devices, find_dsdt, find_rsdp, CpuSource};

/// Guest memory below 1 MiB holding the tables at their addresses.
struct LowMem(Vec<u8>);

impl PhysMem for LowMem {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        self.0.get(start..start.checked_add(len)?)
    }
}

fn guest_with_tables(cpus: u8, devices: &[MmioDevice]) -> LowMem {
    let tables = acpi::build(cpus, devices).expect("tables");
    let mut mem = vec![0u8; 1 << 20];
    for (addr, bytes) in &tables.blobs {
        let at = *addr as usize;
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }
    LowMem(mem)
}

fn devices(n: u32) -> Vec<MmioDevice> {
    (0..n)
        .map(|i| MmioDevice {
            base: 0xd000_0000 + u64::from(i) * 0x1000,
            size: 0x1000,
            irq: 5 + i,
        })
        .collect()
}

#[test]
fn finds_every_device_in_order_from_the_scanned_rsdp() {
    let want = devices(3);
    let mem = guest_with_tables(2, &want);
    let rsdp = find_rsdp(&mem).expect("RSDP in the BIOS area");
    assert_eq!(rsdp, acpi::RSDP_ADDR);
    let dsdt = find_dsdt(&mem, rsdp).expect("DSDT through the FADT");
    let mut out = [VirtioMmioDev::default(); 8];
    let n = dsdt_virtio_devices(dsdt, &mut out);
    let got: Vec<(u64, u64, u32)> = out[..n].iter().map(|d| (d.addr, d.size, d.irq)).collect();
    let want: Vec<(u64, u64, u32)> = want.iter().map(|d| (d.base, d.size, d.irq)).collect();
    assert_eq!(got, want);
    // The MADT of the same tables gives the CPUs (no MP table in this memory).
    let cpus = discover_cpus(&mem, 0);
    assert_eq!(
        (cpus.source, cpus.ids()),
        (CpuSource::Madt, [0u8, 1].as_slice())
    );
}

#[test]
fn no_devices_and_a_full_output_are_handled() {
    let mem = guest_with_tables(1, &[]);
    let dsdt = find_dsdt(&mem, acpi::RSDP_ADDR).expect("DSDT");
    let mut out = [VirtioMmioDev::default(); 4];
    assert_eq!(dsdt_virtio_devices(dsdt, &mut out), 0);

    let mem = guest_with_tables(1, &devices(6));
    let dsdt = find_dsdt(&mem, acpi::RSDP_ADDR).expect("DSDT");
    let mut small = [VirtioMmioDev::default(); 4];
    assert_eq!(dsdt_virtio_devices(dsdt, &mut small), 4);
    assert_eq!(small[3].addr, 0xd000_3000);
}

#[test]
fn a_corrupt_dsdt_is_refused_and_truncated_devices_skipped() {
    let mut mem = guest_with_tables(1, &devices(2));
    let dsdt_addr = {
        let dsdt = find_dsdt(&mem, acpi::RSDP_ADDR).expect("DSDT");
        dsdt.as_ptr() as usize - mem.0.as_ptr() as usize
    };
    // A flipped byte breaks the checksum: no DSDT at all.
    mem.0[dsdt_addr + 40] ^= 0xff;
    assert!(find_dsdt(&mem, acpi::RSDP_ADDR).is_none());
    mem.0[dsdt_addr + 40] ^= 0xff;
    // Cut right after the second device's _HID: only the first is complete.
    let dsdt = find_dsdt(&mem, acpi::RSDP_ADDR).expect("DSDT").to_vec();
    let hid = b"\x0dLNRO0005\x00";
    let second = dsdt
        .windows(hid.len())
        .enumerate()
        .filter(|(_, w)| w == hid)
        .nth(1)
        .map(|(i, _)| i)
        .expect("two devices");
    let mut out = [VirtioMmioDev::default(); 4];
    assert_eq!(
        dsdt_virtio_devices(&dsdt[..second + hid.len()], &mut out),
        1
    );
    assert_eq!(dsdt_virtio_devices(&dsdt[..10], &mut out), 0);
}

#[test]
fn power_off_register_and_s5_type_come_from_the_fadt_and_dsdt() {
    use ferry_probe::tables::{acpi_power_off, s5_sleep_type};
    let mem = guest_with_tables(1, &devices(1));
    let off = acpi_power_off(&mem, acpi::RSDP_ADDR).expect("ACPI power off");
    assert_eq!(off.sleep_control_port, acpi::SLEEP_CONTROL_PORT);
    assert_eq!(off.s5_sleep_type, acpi::S5_SLEEP_TYPE);
    assert_eq!(
        off.command(),
        (acpi::S5_SLEEP_TYPE << 2) | acpi::SLEEP_ENABLE
    );
    assert_eq!(s5_sleep_type(b"no sleep states here"), None);
    assert_eq!(s5_sleep_type(b"_S5_\x12\x06\x04\x00\x00"), Some(0));
    assert_eq!(s5_sleep_type(b"_S5_\x12"), None);
}

#[test]
fn power_button_event_register_comes_from_the_geds_operation_region() {
    use ferry_probe::tables::ged_event_port;
    let mem = guest_with_tables(2, &devices(3));
    let dsdt = find_dsdt(&mem, acpi::RSDP_ADDR).expect("DSDT");
    assert_eq!(ged_event_port(dsdt), Some(acpi::GED_EVENT_PORT));
    // The devices are still all found with the GED's interrupt after the last one.
    let mut out = [VirtioMmioDev::default(); 4];
    assert_eq!(dsdt_virtio_devices(dsdt, &mut out), 3);
    assert_eq!(out[2].irq, 7);
    // Other integer encodings, and what is not a port.
    assert_eq!(ged_event_port(b"\x5b\x80GDST\x01\x0a\x42\x01"), Some(0x42));
    assert_eq!(
        ged_event_port(b"\x5b\x80GDST\x01\x0c\x03\x06\x00\x00"),
        Some(0x603)
    );
    assert_eq!(
        ged_event_port(b"\x5b\x80GDST\x01\x0c\x03\x06\x01\x00"),
        None
    );
    assert_eq!(
        ged_event_port(b"\x5b\x80GDST\x00\x0b\x03\x06"),
        None,
        "memory"
    );
    assert_eq!(
        ged_event_port(b"\x5b\x80GDST\x01\x0b\x03"),
        None,
        "truncated"
    );
}

/// The MADT and the MP table ferry writes for the same machine name the same CPUs (and the probe,
/// like a guest, finds the same list through either).
#[test]
fn madt_and_mp_table_agree_for_1_2_and_4_cpus() {
    use ferry_arch::{layout::MPTABLE_ADDR, mptable};
    use ferry_probe::tables::{find_mp_floating, parse_madt, parse_mp, CpuList};
    for cpus in [1u8, 2, 4] {
        let mut mem = guest_with_tables(cpus, &devices(1));
        let mp = mptable::build(MPTABLE_ADDR, cpus).expect("MP table");
        let at = MPTABLE_ADDR as usize;
        mem.0[at..at + mp.len()].copy_from_slice(&mp);
        let fp = find_mp_floating(&mem).expect("MP floating pointer");
        let (mut from_mp, mut from_madt) = (CpuList::default(), CpuList::default());
        assert!(parse_mp(&mem, fp, &mut from_mp));
        assert!(parse_madt(&mem, acpi::RSDP_ADDR, &mut from_madt));
        let want: Vec<u8> = (0..cpus).collect();
        assert_eq!(from_mp.ids(), want.as_slice(), "{cpus} cpus, MP table");
        assert_eq!(from_madt.ids(), want.as_slice(), "{cpus} cpus, MADT");
    }
}
