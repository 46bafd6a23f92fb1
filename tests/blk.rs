//! virtio-blk with the real ferry binary and the probe's `blk` test: file and block-device
//! (loop device, standing in for an LVM volume) backends, read-only disks, online resize, and
//! the errors a user can cause.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ctl, probe_bin, run_probe, wait_for_socket, FerryProcess, TempDir};
use ferry_probe::{crc32::crc32, pattern};

const DEADLINE: Duration = Duration::from_secs(120);
const KIB: usize = 256;

/// A file of `size` bytes with deterministic non-trivial content.
fn disk_file(dir: &Path, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
    let content: Vec<u8> = (0..size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &content).unwrap();
    (path, content)
}

fn disk_arg(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

#[test]
fn file_disk_reads_what_the_host_wrote() {
    let dir = TempDir::new("blk-read");
    let (path, content) = disk_file(dir.path(), "disk.img", 4 << 20);
    let arg = disk_arg(&path, "");
    let out = run_probe("probe.test=blk", &["--disk", &arg], DEADLINE);
    out.assert_pass("blk");
    assert_eq!(out.probe_value("blk", "sectors").as_deref(), Some("8192"));
    assert_eq!(out.probe_value("blk", "ro").as_deref(), Some("0"));
    let expected = format!("{:08x}", crc32(&content[..KIB * 1024]));
    assert_eq!(out.probe_value("blk", "crc32"), Some(expected));
    assert_eq!(out.code(), Some(0));
}

/// Runs the write test on `path` and checks the host sees exactly the pattern, nothing else.
fn check_write_pattern(disk: &str, path: &Path, before: &[u8], seed: u64) {
    let cmdline = format!("probe.test=blk probe.blk_write={seed}");
    let out = run_probe(&cmdline, &["--disk", disk], DEADLINE);
    out.assert_pass("blk");
    let after = std::fs::read(path).unwrap();
    let mut expected = vec![0u8; KIB * 1024];
    pattern::fill(seed, 0, &mut expected);
    assert!(
        after[..KIB * 1024] == expected[..],
        "the disk does not hold the pattern"
    );
    assert!(
        after[KIB * 1024..] == before[KIB * 1024..],
        "bytes outside the range changed"
    );
    assert_eq!(
        out.probe_value("blk", "crc32"),
        Some(format!("{:08x}", crc32(&expected)))
    );
}

#[test]
fn file_disk_writes_exactly_the_pattern() {
    let dir = TempDir::new("blk-write");
    let (path, before) = disk_file(dir.path(), "disk.img", 2 << 20);
    check_write_pattern(&disk_arg(&path, ""), &path, &before, 42);
    // O_DIRECT path too.
    check_write_pattern(
        &disk_arg(&path, ",direct=on"),
        &path,
        &std::fs::read(&path).unwrap(),
        43,
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let dir = TempDir::new("blk-ro");
    let (path, before) = disk_file(dir.path(), "disk.img", 1 << 20);
    let arg = disk_arg(&path, ",readonly=on");
    let out = run_probe(
        "probe.test=blk probe.blk_write=5",
        &["--disk", &arg],
        DEADLINE,
    );
    out.assert_pass("blk");
    assert_eq!(out.probe_value("blk", "ro").as_deref(), Some("1"));
    assert_eq!(
        out.probe_value("blk", "rejected_write").as_deref(),
        Some("1")
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a read-only disk changed"
    );
}

/// A loop device over a file, detached on drop.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["-f", "--show", file.to_str().unwrap()])
            .output()
            .expect("losetup must be installed (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_device_backend_on_a_loop_device() {
    let dir = TempDir::new("blk-loop");
    let (path, before) = disk_file(dir.path(), "lv.img", 4 << 20);
    let lo = LoopDevice::attach(&path);
    let arg = format!("path={}", lo.0);
    let out = run_probe("probe.test=blk", &["--disk", &arg], DEADLINE);
    out.assert_pass("blk");
    assert_eq!(out.probe_value("blk", "sectors").as_deref(), Some("8192"));
    assert_eq!(
        out.probe_value("blk", "crc32"),
        Some(format!("{:08x}", crc32(&before[..KIB * 1024])))
    );
    // Writes go through O_DIRECT (the default for block devices) to the file behind the device.
    check_write_pattern(&arg, &path, &before, 77);
}

#[test]
fn online_resize_shows_the_new_capacity_and_counts_io() {
    let dir = TempDir::new("blk-resize");
    let (path, _) = disk_file(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("api.sock");
    let probe = probe_bin();
    let disk = disk_arg(&path, ",id=data");
    // blk runs first (I/O, flush), then dirty keeps the guest alive for the API.
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=blk,dirty probe.blk_write=9 probe.dirty_mib=1 probe.dirty_rate_mib=1",
            "--exit-device",
            "--disk",
            &disk,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    assert!(
        vm.stdout().contains("probe: blk: PASS dev=0 sectors=2048"),
        "{}",
        vm.stdout()
    );
    wait_for_socket(&socket, DEADLINE);

    let metrics = ctl(&socket, &["metrics"], DEADLINE);
    let flushes = metric(&metrics.stdout, "ferry_block_flushes_total{drive=\"data\"}");
    assert!(
        flushes >= 1.0,
        "no flush reached the backend:\n{}",
        metrics.stdout
    );
    assert!(
        metric(
            &metrics.stdout,
            "ferry_block_write_bytes_total{drive=\"data\"}"
        ) >= (KIB * 1024) as f64
    );

    // Grow the file, ask ferry to re-read it; the guest-visible capacity changes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let out = ctl(&socket, &["resize-disk", "data"], DEADLINE);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let snap = dir.path().join("snap");
    let out = ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("vmstate")).unwrap()).unwrap();
    let device = &state["virtio"]["devices"][0];
    assert_eq!(device["id"], "data");
    assert_eq!(device["model"]["capacity"], 3 << 20);
    // The config-change interrupt was raised: the generation moved.
    assert!(device["transport"]["config_generation"].as_u64().unwrap() >= 1);

    let out = ctl(&socket, &["resize-disk", "nope"], DEADLINE);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("no drive") && out.stderr.contains("nope"),
        "{}",
        out.stderr
    );
}

/// The value of a Prometheus sample line `name value`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim().parse().unwrap_or(-1.0))
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[test]
fn bad_disks_are_clear_errors() {
    let dir = TempDir::new("blk-errors");
    let probe = probe_bin();
    let run = |disk: &str| {
        common::run_ferry(
            &[
                "run",
                "--kernel",
                probe.to_str().unwrap(),
                "--disk",
                disk,
                "--exit-device",
            ],
            DEADLINE,
        )
    };
    let out = run("path=/nonexistent/disk.img");
    assert_eq!(out.code(), Some(1));
    assert!(out.error_line().contains("disk 'disk0'"), "{}", out.stderr);
    assert!(
        out.error_line().contains("/nonexistent/disk.img"),
        "{}",
        out.stderr
    );

    let out = run(&format!("path={}", dir.path().display()));
    assert_eq!(out.code(), Some(1));
    assert!(out.error_line().contains("directory"), "{}", out.stderr);

    let out = run("path=iscsi://127.0.0.1/not-a-valid-url");
    assert_eq!(out.code(), Some(1));
    assert!(out.error_line().contains("iscsi"), "{}", out.stderr);

    let out = run("path=/dev/null");
    assert_eq!(out.code(), Some(1));
    assert!(
        out.error_line().contains("character device"),
        "{}",
        out.stderr
    );
}

/// With ACPI (the default) the guest finds the disk in the DSDT, not on the command line, and
/// powers off through the FADT's sleep control register, which ends ferry with status 0.
#[test]
fn acpi_describes_the_disk_and_powers_the_guest_off() {
    let dir = TempDir::new("blk-acpi");
    let (path, _) = disk_file(dir.path(), "disk.img", 1 << 20);
    let arg = disk_arg(&path, "");
    let out = run_probe(
        "probe.test=info,blk,poweroff",
        &["--disk", &arg, "--log-level", "info"],
        DEADLINE,
    );
    out.assert_pass("info");
    out.assert_pass("blk");
    out.assert_pass("poweroff");
    assert_eq!(
        out.probe_value("info", "virtio_source").as_deref(),
        Some("dsdt")
    );
    assert_eq!(
        out.probe_value("info", "virtio_devices").as_deref(),
        Some("1")
    );
    assert_eq!(
        out.probe_value("info", "acpi_power_off").as_deref(),
        Some("1")
    );
    assert_eq!(
        out.probe_value("poweroff", "port").as_deref(),
        Some("0x600")
    );
    assert!(!out.stdout.contains("probe: done"), "{}", out.stdout);
    assert!(
        out.stderr.contains("guest powered off through ACPI (S5)"),
        "{}",
        out.stderr
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

/// `--acpi off`: no tables, the devices are on the command line (kernels without ACPI), and
/// there is no ACPI way to power off.
#[test]
fn acpi_off_announces_the_disk_on_the_command_line() {
    let dir = TempDir::new("blk-noacpi");
    let (path, _) = disk_file(dir.path(), "disk.img", 1 << 20);
    let arg = disk_arg(&path, "");
    let out = run_probe(
        "probe.test=info,blk,poweroff",
        &["--acpi", "off", "--disk", &arg],
        DEADLINE,
    );
    out.assert_pass("info");
    out.assert_pass("blk");
    assert_eq!(
        out.probe_value("info", "virtio_source").as_deref(),
        Some("cmdline")
    );
    assert_eq!(
        out.probe_value("info", "acpi_power_off").as_deref(),
        Some("0")
    );
    assert!(
        out.stdout.contains("probe: poweroff: FAIL"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.code(),
        Some(1),
        "the failed poweroff test ends the run with 1"
    );
}
