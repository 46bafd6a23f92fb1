//! Rate limiters with the real ferry binary and the probe guest: a limited disk throttles (the
//! device's counter rises) while the data still verifies; PATCH changes a running guest's
//! limiter (and `GET /vm/config` shows it); the limiter survives a snapshot and restore; an
//! unlimited disk never throttles; a limited NIC throttles both ways while the probe's pings
//! all come back; bad values are usage errors and 400s.
//!
//! No assertion on elapsed time (the machine may be loaded): counters and data only. Rates are
//! measured by `resources/bench/rate_limit.sh` instead.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    assert_disk_holds_blk_rounds, http, probe_bin, run_probe, wait_for_socket, FerryProcess,
    TempDir, ROUND_VERIFIED, ROUND_VERIFIED_1,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(180);
const BLK_KIB: usize = 256;

/// The value of the Prometheus sample `name` (labels included) in `GET /metrics`.
fn metric(socket: &Path, name: &str) -> u64 {
    let (status, text) = http(socket, "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

fn vm_config(socket: &Path) -> Value {
    let (status, text) = http(socket, "GET", "/vm/config", None);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn patch(socket: &Path, path: &str, body: &str) {
    let (status, text) = http(socket, "PATCH", path, Some(body));
    assert_eq!(status, 204, "PATCH {path} {body}: {text}");
}

fn spawn_disk_rounds(dir: &Path, disk: &str, seed: u64) -> (FerryProcess, std::path::PathBuf) {
    let socket = dir.join("api.sock");
    let probe = probe_bin();
    let cmdline =
        format!("probe.test=blk probe.blk_write={seed} probe.blk_kib={BLK_KIB} probe.blk_rounds=0");
    let vm = FerryProcess::spawn(
        dir,
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--exit-device",
            "--disk",
            disk,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    (vm, socket)
}

#[test]
fn limited_disk_throttles_follows_patches_and_keeps_its_data() {
    const SEED: u64 = 0x5a17;
    const THROTTLED: &str = "ferry_block_throttled_total{drive=\"data\"}";
    let dir = TempDir::new("rl-disk");
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    // 1 MB/s (100 kB per 100 ms): the probe keeps four 64 KiB requests in flight, so the second
    // one already waits for tokens.
    let disk = format!("path={},id=data,bps=1000000", path.display());
    let (mut vm, socket) = spawn_disk_rounds(dir.path(), &disk, SEED);
    vm.wait_for_output(ROUND_VERIFIED_1, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let limited = metric(&socket, THROTTLED);
    assert!(limited >= 1, "a 1 MB/s disk never throttled");
    let config = vm_config(&socket);
    assert_eq!(
        config["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": {"size": 100000, "refill_time": 100}})
    );

    // Remove the limit on the running guest: no throttle event while more rounds complete.
    patch(
        &socket,
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
    );
    assert!(vm_config(&socket)["drives"][0]
        .get("rate_limiter")
        .is_none());
    let before = metric(&socket, THROTTLED);
    let rounds = vm.stdout().matches(ROUND_VERIFIED).count();
    vm.wait_for_occurrences(ROUND_VERIFIED, rounds + 2, DEADLINE);
    assert_eq!(
        metric(&socket, THROTTLED),
        before,
        "throttled without a limit"
    );

    // An ops limit (one request per 50 ms): throttling again.
    patch(
        &socket,
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1, "refill_time": 50}}}"#,
    );
    let rounds = vm.stdout().matches(ROUND_VERIFIED).count();
    vm.wait_for_occurrences(ROUND_VERIFIED, rounds + 1, DEADLINE);
    assert!(
        metric(&socket, THROTTLED) > before,
        "the new limit did not apply"
    );
    assert_eq!(
        vm_config(&socket)["drives"][0]["rate_limiter"],
        serde_json::json!({"ops": {"size": 1, "refill_time": 50}})
    );

    // Every acknowledged write is on the disk (snapshot with the VM paused, then check).
    assert_disk_holds_blk_rounds(&socket, dir.path(), SEED, || {
        std::fs::read(&path).unwrap()[..BLK_KIB * 1024].to_vec()
    });
    let snap = dir.path().join("paused");
    let state: Value =
        serde_json::from_slice(&std::fs::read(snap.join("vmstate")).unwrap()).unwrap();
    assert_eq!(
        state["config"]["drives"][0]["rate_limiter"]["ops"]["size"],
        1
    );
    assert_eq!(
        state["virtio"]["devices"][0]["model"]["rate_limiter"]["ops"]["config"]["size"],
        1
    );
    drop(vm);

    // Restored, the guest goes on under the same limit.
    let socket2 = dir.path().join("restored.sock");
    let mut restored = FerryProcess::spawn(
        dir.path(),
        "restored",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            // The snapshot's disk lies in this test's directory.
            "--allow-path",
            dir.path().to_str().unwrap(),
            "--api-socket",
            socket2.to_str().unwrap(),
        ],
    );
    wait_for_socket(&socket2, DEADLINE);
    restored.wait_for_occurrences(ROUND_VERIFIED, 2, DEADLINE);
    assert_eq!(
        vm_config(&socket2)["drives"][0]["rate_limiter"],
        serde_json::json!({"ops": {"size": 1, "refill_time": 50}})
    );
    assert!(metric(&socket2, THROTTLED) >= 1);
}

#[test]
fn unlimited_disk_never_throttles() {
    let dir = TempDir::new("rl-free");
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={},id=free", path.display());
    let (mut vm, socket) = spawn_disk_rounds(dir.path(), &disk, 3);
    vm.wait_for_occurrences(ROUND_VERIFIED, 2, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    assert_eq!(
        metric(&socket, "ferry_block_throttled_total{drive=\"free\"}"),
        0
    );
    assert!(vm_config(&socket)["drives"][0]
        .get("rate_limiter")
        .is_none());
}

#[test]
fn bad_limits_are_usage_errors_and_400s() {
    let dir = TempDir::new("rl-bad");
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for (flag, value, want) in [
        ("--disk", format!("path={},bps=0", disk.display()), "bps=0"),
        (
            "--disk",
            format!("path={},iops=1x", disk.display()),
            "iops=1x",
        ),
        ("--net", "tap=t0,rx-pps-burst=5".to_string(), "rx-pps="),
    ] {
        let out = run_probe("probe.test=boot", &[flag, &value], DEADLINE);
        assert_eq!(out.code(), Some(2), "{value}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{value}: {}", out.stderr);
    }

    let socket = dir.path().join("api.sock");
    let _vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    let body = format!(
        r#"{{"drive_id": "d", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"bandwidth": {{"size": 4096, "refill_time": 0}}}}}}"#,
        disk.display()
    );
    let (status, text) = http(&socket, "PUT", "/drives/d", Some(&body));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("refill_time must be at least 1 ms"), "{text}");
    // A valid one is kept in the configuration.
    let body = body.replace(r#""refill_time": 0"#, r#""refill_time": 10"#);
    let (status, text) = http(&socket, "PUT", "/drives/d", Some(&body));
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        vm_config(&socket)["drives"][0]["rate_limiter"]["bandwidth"]["refill_time"],
        10
    );
    // PATCH is for a running guest.
    let (status, text) = http(
        &socket,
        "PATCH",
        "/drives/d",
        Some(r#"{"drive_id": "d", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#),
    );
    assert_eq!(status, 400, "{text}");
}

/// Runs a command; panics with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace holding a tap with the peer address, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn limited_nic_throttles_both_ways_and_every_ping_returns() {
    let tag = format!("{:x}", std::process::id() % 0x10000);
    let ns = Netns(format!("ferry-rl{tag}"));
    sh(&["ip", "netns", "add", &ns.0]);
    let tap = format!("rlt{tag}");
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["tuntap", "add", "dev", &tap, "mode", "tap"],
        vec!["addr", "add", "10.79.0.1/24", "dev", &tap],
        vec!["link", "set", &tap, "up"],
    ] {
        let mut v = vec!["ip", "-n", &ns.0];
        v.extend_from_slice(&args);
        sh(&v);
    }
    let dir = TempDir::new("rl-net");
    let socket = dir.path().join("api.sock");
    // 600 B/s each way (60 bytes per 100 ms): every 74-byte ICMP frame is larger than the
    // bucket, passes when the bucket is out of debt and leaves one, so each direction sleeps
    // on its timer at least once whatever the timing, and every ping still comes back.
    let net = format!("tap={tap},id=eth0,rx-bps=600,tx-bps=600");
    let probe = probe_bin();
    let stdout_path = dir.path().join("vm.out");
    let stderr_path = dir.path().join("vm.err");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(common::ferry_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args([
            "--cmdline",
            "probe.test=net,dirty probe.net_ip=10.79.0.2/24 probe.net_peer=10.79.0.1 \
             probe.net_count=3 probe.net_linger_ms=0 probe.dirty_mib=1 probe.dirty_rate_mib=1",
            "--exit-device",
            "--net",
            &net,
            "--api-socket",
            socket.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut vm = FerryProcess {
        child,
        stdout_path,
        stderr_path,
    };
    // The probe prints its net line, then runs its endless dirty test.
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let stdout = vm.stdout();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("probe: net: "))
        .unwrap_or_default();
    assert!(
        line.starts_with("probe: net: PASS sent=3 received=3"),
        "{stdout}\n{}",
        vm.stderr()
    );
    wait_for_socket(&socket, DEADLINE);
    let rx = metric(&socket, "ferry_net_rx_throttled_total{iface=\"eth0\"}");
    let tx = metric(&socket, "ferry_net_tx_throttled_total{iface=\"eth0\"}");
    assert!(rx >= 1 && tx >= 1, "rx={rx} tx={tx}");
    // (No assertion on rx_dropped: the host's own IPv6 chatter may still wait in ferry's buffer
    // when the probe resets the device, which drops it as a reset does.)
    let config = vm_config(&socket);
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"],
        60
    );
    // Lift the TX limit on the running guest; RX stays.
    patch(
        &socket,
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
    );
    let config = vm_config(&socket);
    assert!(config["network-interfaces"][0]
        .get("tx_rate_limiter")
        .is_none());
    assert_eq!(
        config["network-interfaces"][0]["rx_rate_limiter"]["bandwidth"]["size"],
        60
    );
}
