//! `PATCH /drives/{id}` with a new `path_on_host` on a running guest (Firecracker's backing
//! swap), with the real ferry binary and the probe's `blkchange` test, which reports capacity and
//! CRC before and after each configuration change it is interrupted for.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ctl, http, probe_bin, wait_for_socket, FerryProcess, TempDir};
use ferry_probe::crc32::crc32;

const DEADLINE: Duration = Duration::from_secs(120);
/// Bytes the probe reads and checksums (`probe.blk_kib=1024`).
const READ: usize = 1 << 20;

/// A file of `size` bytes of content depending on `seed`.
fn disk_file(dir: &Path, name: &str, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let content: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &content).unwrap();
    (path, content)
}

/// The `key=value` of the probe's line that starts with `prefix`.
fn value(out: &str, prefix: &str, key: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn crc_hex(data: &[u8]) -> String {
    format!("{:08x}", crc32(&data[..READ]))
}

fn patch_path(socket: &Path, path: &str) -> (u16, String) {
    let body = serde_json::json!({"drive_id": "data", "path_on_host": path}).to_string();
    http(socket, "PATCH", "/drives/data", Some(&body))
}

fn configured_path(socket: &Path) -> String {
    let (status, body) = http(socket, "GET", "/vm/config", None);
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    config["drives"][0]["path_on_host"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn patch_drive_path_swaps_the_backing_of_a_running_guest() {
    let dir = TempDir::new("drive-swap");
    let (a, a_data) = disk_file(dir.path(), "a.img", 1 << 20, 1);
    let (b, mut b_data) = disk_file(dir.path(), "b.img", 2 << 20, 2);
    let socket = dir.path().join("api.sock");
    let probe = probe_bin();
    let disk = format!("path={},id=data", a.display());
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=blkchange probe.blk_kib=1024 probe.blk_changes=2",
            "--exit-device",
            "--disk",
            &disk,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    vm.wait_for_output("probe: blkchange: before", DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let out = vm.stdout();
    assert_eq!(value(&out, "probe: blkchange: before", "sectors"), "2048");
    assert_eq!(
        value(&out, "probe: blkchange: before", "crc32"),
        crc_hex(&a_data)
    );

    // Paths that cannot be a drive: 400 naming the problem; the drive stays on a.img.
    let missing = dir.path().join("missing.img");
    let (status, body) = patch_path(&socket, missing.to_str().unwrap());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no such file"), "{body}");
    let (status, body) = patch_path(&socket, dir.path().to_str().unwrap());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("directory"), "{body}");
    assert_eq!(configured_path(&socket), a.to_str().unwrap());

    // The swap: the guest is told, and reads b.img through its live queue.
    let (status, body) = patch_path(&socket, b.to_str().unwrap());
    assert_eq!(status, 204, "{body}");
    vm.wait_for_output("probe: blkchange: change 1 ", DEADLINE);
    let out = vm.stdout();
    assert_eq!(
        value(&out, "probe: blkchange: change 1 ", "sectors"),
        "4096"
    );
    assert_eq!(
        value(&out, "probe: blkchange: change 1 ", "crc32"),
        crc_hex(&b_data)
    );
    assert_eq!(configured_path(&socket), b.to_str().unwrap());

    // Snapshots carry the new path (a restore or a migration opens b.img).
    let snap = dir.path().join("snap");
    let out = ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("vmstate")).unwrap()).unwrap();
    assert_eq!(
        state["config"]["drives"][0]["path_on_host"],
        b.to_str().unwrap()
    );
    assert_eq!(state["virtio"]["devices"][0]["model"]["capacity"], 2 << 20);

    // A failed swap leaves b.img attached: a resize of b.img afterwards reaches the guest with
    // b.img's data and its new size.
    let (status, _) = patch_path(&socket, missing.to_str().unwrap());
    assert_eq!(status, 400);
    b_data.resize(3 << 20, 0);
    std::fs::write(&b, &b_data).unwrap();
    let (status, body) = patch_path(&socket, b.to_str().unwrap());
    assert_eq!(status, 204, "{body}");
    vm.wait_for_output("probe: blkchange: PASS", DEADLINE);
    let out = vm.stdout();
    assert_eq!(
        value(&out, "probe: blkchange: change 2 ", "sectors"),
        "6144"
    );
    assert_eq!(
        value(&out, "probe: blkchange: change 2 ", "crc32"),
        crc_hex(&b_data)
    );
    assert!(vm.wait_exit(DEADLINE).success(), "{}", vm.stderr());
    // The guest only read: a.img is as it was.
    assert_eq!(std::fs::read(&a).unwrap(), a_data);
}
