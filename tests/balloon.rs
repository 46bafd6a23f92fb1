//! The balloon with the real ferry binary and the probe guest's `balloon` driver: the API round
//! trip (PUT before boot, PATCH after, GET, statistics), inflating gives memory back to the host
//! (ferry's resident set falls by at least 90 % of what the guest handed over — one process,
//! measured before and after), deflating, Firecracker's 400s, and a snapshot and restore.
//!
//! No assertion on elapsed time: conditions are polled with generous bounds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ctl, http, wait_for_socket, FerryProcess, TempDir};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(180);
const POOL_MIB: u64 = 64;
const INFLATE_MIB: u64 = 48;

/// The probe with 256 MiB, the exit device and an API socket (waited for).
fn spawn(dir: &Path, name: &str, cmdline: &str, extra: &[&str]) -> (FerryProcess, PathBuf) {
    let flags = [&["--memory", "256M", "--exit-device"], extra].concat();
    let (vm, socket) = FerryProcess::spawn_probe_with_api(dir, name, cmdline, &flags);
    wait_for_socket(&socket, DEADLINE);
    (vm, socket)
}

fn json(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = http(socket, method, path, body);
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn get(socket: &Path, path: &str) -> Value {
    let (status, value) = json(socket, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {value}");
    value
}

/// ferry's resident set in KiB (VmRSS of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Polls `f` until it returns true (bounded by [`DEADLINE`]).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn actual_line(pages: u64) -> String {
    format!("probe: balloon: actual {pages}\n")
}

#[test]
fn inflate_gives_memory_back_and_statistics_round_trip() {
    let dir = TempDir::new("balloon-inflate");
    let cmdline = format!("probe.test=balloon probe.balloon_mib={POOL_MIB}");
    let (mut vm, socket) = spawn(
        dir.path(),
        "vm",
        &cmdline,
        &["--balloon", "amount_mib=0,deflate_on_oom=on,stats_s=1"],
    );
    vm.wait_for_output("probe: balloon: ready", DEADLINE);
    let pid = vm.child.id();

    let balloon = get(&socket, "/balloon");
    assert_eq!(balloon["amount_mib"], 0);
    assert_eq!(balloon["deflate_on_oom"], true);
    assert_eq!(balloon["stats_polling_interval_s"], 1);
    assert_eq!(get(&socket, "/vm/config")["balloon"]["amount_mib"], 0);

    // The first statistics arrive with the driver's first buffer.
    wait_until("first statistics", || {
        get(&socket, "/balloon/statistics")["total_memory"] == POOL_MIB << 20
    });

    let before = rss_kib(pid);
    let body = format!(r#"{{"amount_mib": {INFLATE_MIB}}}"#);
    assert_eq!(http(&socket, "PATCH", "/balloon", Some(&body)).0, 204);
    vm.wait_for_output(&actual_line(INFLATE_MIB * 256), DEADLINE);
    let want_drop = INFLATE_MIB * 1024 * 9 / 10;
    let mut after = before;
    wait_until("ferry's RSS falls by 90 % of the inflated memory", || {
        after = rss_kib(pid);
        before.saturating_sub(after) >= want_drop
    });
    eprintln!("RSS {before} KiB -> {after} KiB after inflating {INFLATE_MIB} MiB");

    let balloon = get(&socket, "/balloon");
    assert_eq!(balloon["amount_mib"], INFLATE_MIB);
    assert_eq!(balloon["actual_mib"], INFLATE_MIB);
    wait_until("statistics show the inflated balloon", || {
        let s = get(&socket, "/balloon/statistics");
        s["actual_mib"] == INFLATE_MIB
            && s["target_pages"] == INFLATE_MIB * 256
            && s["free_memory"] == (POOL_MIB - INFLATE_MIB) << 20
    });
    assert!(
        get(&socket, "/balloon/statistics").get("swap_in").is_none(),
        "not reported"
    );

    // A new interval asks the guest at once; statistics cannot be switched off after boot.
    let refills = get(&socket, "/balloon/statistics")["minor_faults"]
        .as_u64()
        .unwrap();
    assert_eq!(
        http(
            &socket,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 30}"#)
        )
        .0,
        204
    );
    wait_until("a fresh report after the interval change", || {
        get(&socket, "/balloon/statistics")["minor_faults"]
            .as_u64()
            .unwrap()
            > refills
    });
    let (status, err) = json(
        &socket,
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 0}"#),
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(get(&socket, "/balloon")["stats_polling_interval_s"], 30);
    // More than the guest's memory, and PUT after boot: 400.
    assert_eq!(
        http(
            &socket,
            "PATCH",
            "/balloon",
            Some(r#"{"amount_mib": 4096}"#)
        )
        .0,
        400
    );
    assert_eq!(
        http(
            &socket,
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#)
        )
        .0,
        400
    );

    let metrics = http(&socket, "GET", "/metrics", None).1;
    let released: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_balloon_released_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(released, INFLATE_MIB << 20, "{metrics}");

    // Deflate: the guest takes its pages back and writes them; the test then passes.
    assert_eq!(
        http(&socket, "PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#)).0,
        204
    );
    let status = vm.wait_exit(DEADLINE);
    let stdout = vm.stdout();
    assert!(
        stdout.contains("probe: balloon: PASS") && status.code() == Some(0),
        "{status}\n{stdout}\n{}",
        vm.stderr()
    );
}

#[test]
fn api_errors_before_boot_and_without_statistics() {
    let dir = TempDir::new("balloon-api");
    let socket = dir.path().join("api.sock");
    let _vm = FerryProcess::spawn(
        dir.path(),
        "api",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    // Nothing configured: GET is a 400, as on Firecracker.
    assert_eq!(json(&socket, "GET", "/balloon", None).0, 400);
    // Post-boot operations before boot.
    assert_eq!(
        http(&socket, "PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#)).0,
        400
    );
    assert_eq!(http(&socket, "GET", "/balloon/statistics", None).0, 400);
    assert_eq!(
        http(
            &socket,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#)
        )
        .0,
        400
    );
    // Bodies Firecracker refuses.
    for body in [
        r#"{"amount_mib": 1}"#,
        r#"{"amount_mib": -1, "deflate_on_oom": false}"#,
        r#"{"amount_mib": 1, "deflate_on_oom": false, "bogus": 1}"#,
        r#"{"amount_mib": 1, "deflate_on_oom": false, "stats_polling_interval_s": 70000}"#,
        r#"{"amount_mib": 100000, "deflate_on_oom": false}"#,
        r#"{"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#,
    ] {
        assert_eq!(
            http(&socket, "PUT", "/balloon", Some(body)).0,
            400,
            "{body}"
        );
    }
    let body = r#"{"amount_mib": 8, "deflate_on_oom": false, "free_page_reporting": true}"#;
    assert_eq!(http(&socket, "PUT", "/balloon", Some(body)).0, 204);
    let balloon = get(&socket, "/balloon");
    assert_eq!(
        (
            balloon["amount_mib"].clone(),
            balloon["free_page_reporting"].clone()
        ),
        (Value::from(8), Value::from(true))
    );
    assert_eq!(get(&socket, "/vm/config")["balloon"]["amount_mib"], 8);
}

#[test]
fn statistics_disabled_is_a_400_after_boot() {
    let dir = TempDir::new("balloon-nostats");
    let (mut vm, socket) = spawn(
        dir.path(),
        "vm",
        "probe.test=balloon probe.balloon_mib=8",
        &["--balloon", "amount_mib=0"],
    );
    vm.wait_for_output("probe: balloon: ready", DEADLINE);
    assert_eq!(json(&socket, "GET", "/balloon/statistics", None).0, 400);
    assert_eq!(
        http(
            &socket,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#)
        )
        .0,
        400
    );
    assert_eq!(get(&socket, "/balloon")["actual_mib"], 0);
}

#[test]
fn snapshot_and_restore_keep_the_balloon() {
    let dir = TempDir::new("balloon-snap");
    let (mut vm, socket) = spawn(
        dir.path(),
        "source",
        "probe.test=balloon probe.balloon_mib=32",
        &["--balloon", "amount_mib=0,stats_s=1"],
    );
    vm.wait_for_output("probe: balloon: ready", DEADLINE);
    assert_eq!(
        http(&socket, "PATCH", "/balloon", Some(r#"{"amount_mib": 16}"#)).0,
        204
    );
    vm.wait_for_output(&actual_line(16 * 256), DEADLINE);
    let snap = dir.path().join("snap");
    let out = ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let state: Value =
        serde_json::from_slice(&std::fs::read(snap.join("vmstate")).unwrap()).unwrap();
    let device = &state["virtio"]["devices"][0];
    assert_eq!(device["id"], "balloon");
    assert_eq!(device["model"]["target_pages"], 16 * 256);
    assert_eq!(device["model"]["actual_pages"], 16 * 256);
    assert_eq!(state["config"]["balloon"]["amount_mib"], 16);
    // The ballooned pages (the top 16 MiB of the pool at 64 MiB) are not in the memory file:
    // the host no longer backs them, and the snapshot writer leaves unbacked pages as holes.
    let memory = std::fs::File::open(snap.join("memory")).unwrap();
    let (ballooned, pool_end) = (80i64 << 20, 96i64 << 20);
    // SAFETY: lseek on a file we own; no memory is passed.
    let next_data = unsafe {
        libc::lseek(
            std::os::fd::AsRawFd::as_raw_fd(&memory),
            ballooned,
            libc::SEEK_DATA,
        )
    };
    assert!(
        next_data < 0 || next_data >= pool_end,
        "data at {next_data:#x} inside the ballooned range"
    );
    drop(vm);

    let socket2 = dir.path().join("restored.sock");
    let mut restored = FerryProcess::spawn(
        dir.path(),
        "restored",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--api-socket",
            socket2.to_str().unwrap(),
        ],
    );
    wait_for_socket(&socket2, DEADLINE);
    let balloon = get(&socket2, "/balloon");
    assert_eq!(
        (balloon["amount_mib"].clone(), balloon["actual_mib"].clone()),
        (16.into(), 16.into())
    );
    // The restored device still serves the statistics queue and the guest's deflation.
    wait_until("statistics after the restore", || {
        get(&socket2, "/balloon/statistics")["free_memory"] == 16u64 << 20
    });
    assert_eq!(
        http(&socket2, "PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#)).0,
        204
    );
    let status = restored.wait_exit(DEADLINE);
    assert!(
        restored.stdout().contains("probe: balloon: PASS") && status.code() == Some(0),
        "{status}\n{}\n{}",
        restored.stdout(),
        restored.stderr()
    );
}
