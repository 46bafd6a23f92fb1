//! Boots the probe under QEMU (`-M microvm`, KVM) to check the device tests against an
//! independent VMM: `smp` (MADT path), `blk` (read, write + verify, read-only rejection) and
//! `net` (slirp answers ARP and ICMP for 10.0.2.2). Skips (passes with a note) when
//! `qemu-system-x86_64` or /dev/kvm is missing.

use std::path::PathBuf;
use std::process::Command;

fn probe() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("probe")
}

fn available() -> bool {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !(qemu && kvm) {
        eprintln!("skipping: qemu-system-x86_64 or /dev/kvm unavailable");
    }
    qemu && kvm
}

/// Runs QEMU with `extra` arguments and the probe command line; returns (serial, probe status).
fn qemu(machine: &str, extra: &[&str], cmdline: &str) -> (String, i32) {
    let out = Command::new("timeout")
        .args([
            "60",
            "qemu-system-x86_64",
            "-M",
            machine,
            "-accel",
            "kvm",
            "-m",
            "256M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-global",
            "virtio-mmio.force-legacy=false",
        ])
        .args(extra)
        .arg("-kernel")
        .arg(probe())
        .args(["-append", cmdline])
        .output()
        .expect("run qemu");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // isa-debug-exit turns status V into (V << 1) | 1.
    let code = out.status.code().unwrap_or(-1);
    (text, if code & 1 == 1 { code >> 1 } else { -1 })
}

fn disk(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ferry-probe-{}-{name}.img", std::process::id()));
    std::fs::write(&p, bytes).expect("write disk image");
    p
}

#[test]
fn smp_wakes_all_cpus_from_madt() {
    if !available() {
        return;
    }
    let (text, code) = qemu("microvm", &["-smp", "4"], "probe.test=boot,smp");
    assert!(
        text.contains("probe: boot: PASS mem_mib=255 cpus=4 cmdline_ok=1\n"),
        "{text}"
    );
    assert!(text.contains("probe: smp: PASS cpus=4\n"), "{text}");
    assert_eq!(code, 0, "{text}");
}

#[test]
fn blk_reads_writes_and_respects_read_only() {
    if !available() {
        return;
    }
    let content: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let ro = disk("ro", &content);
    let rw = disk("rw", &content);
    let ro_arg = format!("id=d0,file={},format=raw,if=none,readonly=on", ro.display());
    let rw_arg = format!("id=d1,file={},format=raw,if=none", rw.display());
    let args = [
        "-drive",
        &ro_arg,
        "-device",
        "virtio-blk-device,drive=d0",
        "-drive",
        &rw_arg,
    ];
    let args = [&args[..], &["-device", "virtio-blk-device,drive=d1"]].concat();
    let (text, code) = qemu(
        "microvm,acpi=off",
        &args,
        "probe.test=blk probe.blk_write=99 probe.blk_kib=1100",
    );
    let n = 1100 << 10;
    let ro_crc = ferry_probe::crc32::crc32(&content[..n]);
    let mut pattern = vec![0u8; n];
    ferry_probe::pattern::fill(99, 0, &mut pattern);
    let rw_crc = ferry_probe::crc32::crc32(&pattern);
    let want_ro =
        format!("probe: blk: PASS dev=0 sectors=8192 crc32={ro_crc:08x} ro=1 rejected_write=1\n");
    let want_rw = format!("probe: blk: PASS dev=1 sectors=8192 crc32={rw_crc:08x} ro=0\n");
    assert!(text.contains(&want_ro), "{text}");
    assert!(text.contains(&want_rw), "{text}");
    assert_eq!(code, 0, "{text}");
    let written = std::fs::read(&rw).expect("read back");
    assert_eq!(&written[..n], &pattern[..]);
    assert_eq!(
        &written[n..],
        &content[n..],
        "nothing beyond the range is written"
    );
    assert_eq!(std::fs::read(&ro).expect("read ro"), content);
    let _ = std::fs::remove_file(ro);
    let _ = std::fs::remove_file(rw);
}

#[test]
fn blk_without_device_fails() {
    if !available() {
        return;
    }
    let (text, code) = qemu("microvm,acpi=off", &[], "probe.test=blk");
    assert!(
        text.contains("probe: blk: FAIL no virtio-blk device\n"),
        "{text}"
    );
    assert_eq!(code, 1);
}

#[test]
fn net_pings_slirp_gateway() {
    if !available() {
        return;
    }
    let args = [
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-device,netdev=n0,mac=52:54:00:ab:cd:ef",
    ];
    let cmd = "probe.test=net probe.net_ip=10.0.2.15/24 probe.net_peer=10.0.2.2 probe.net_count=3 probe.net_linger_ms=10";
    let (text, code) = qemu("microvm,acpi=off", &args, cmd);
    assert!(
        text.contains("probe: net: PASS sent=3 received=3 answered=0 mac=52:54:00:ab:cd:ef\n"),
        "{text}"
    );
    assert_eq!(code, 0, "{text}");
}

#[test]
fn rng_reads_qemus_virtio_rng() {
    // A second implementation of the device, so the probe's rng test is not only checked
    // against ferry's.
    if !available() {
        return;
    }
    let (text, code) = qemu(
        "microvm,acpi=off",
        &["-device", "virtio-rng-device"],
        "probe.test=rng",
    );
    assert!(text.contains("probe: rng: PASS bytes=65536 "), "{text}");
    assert_eq!(code, 0, "{text}");
}
