//! The entropy device with the real ferry binary and the probe guest's `rng` test: through
//! `--entropy` (announced in the DSDT, or on the command line with `--acpi off`), through the API
//! (`PUT /entropy`, then InstanceStart; refused after boot), with a rate limit (the limiter's
//! throttle counter rises while every byte still arrives), and across a snapshot and restore
//! and a live migration (the limiter's configuration and tokens go along).
//!
//! No assertion on elapsed time: counters and the guest's own checks only. Throughput and the
//! delivered rate are measured by `devices/benches/entropy.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ctl, http, probe_bin, run_probe, wait_for_socket, FerryProcess, TempDir};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(180);
/// What keeps the guest alive after its rng test, so the API can still be asked (the probe's
/// endless, paced dirty loop).
const KEEP_RUNNING: &str = "dirty probe.dirty_mib=1 probe.dirty_rate_mib=1";

/// The value of the Prometheus sample `name` in `GET /metrics`.
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

/// The probe's `rng` PASS line in `stdout`, or a panic showing what happened.
fn rng_pass_line(stdout: &str, stderr: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("probe: rng: "))
        .unwrap_or_default();
    assert!(
        line.starts_with("probe: rng: PASS"),
        "--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    line.to_string()
}

/// The probe with the exit device and an API socket (not waited for).
fn spawn_probe(dir: &Path, name: &str, cmdline: &str, extra: &[&str]) -> (FerryProcess, PathBuf) {
    let flags = [&["--exit-device"], extra].concat();
    FerryProcess::spawn_probe_with_api(dir, name, cmdline, &flags)
}

#[test]
fn entropy_flag_gives_the_guest_random_bytes_with_and_without_acpi() {
    for acpi in ["on", "off"] {
        let out = run_probe(
            "probe.test=info,rng",
            &["--entropy", "--acpi", acpi],
            DEADLINE,
        );
        out.assert_pass("rng");
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        assert_eq!(out.probe_value("rng", "bytes").as_deref(), Some("65536"));
        assert_eq!(
            out.probe_value("info", "virtio_devices").as_deref(),
            Some("1")
        );
        let source = if acpi == "on" { "dsdt" } else { "cmdline" };
        assert_eq!(
            out.probe_value("info", "virtio_source").as_deref(),
            Some(source)
        );
    }
    // Without the flag there is no device.
    let out = run_probe("probe.test=info,rng", &[], DEADLINE);
    assert_eq!(
        out.probe_value("info", "virtio_devices").as_deref(),
        Some("0")
    );
    assert!(
        out.probe_line("rng")
            .is_some_and(|l| l.contains("FAIL no virtio-rng device")),
        "{}",
        out.stdout
    );
    // Bad options are usage errors.
    for bad in [
        "--entropy=bps=0",
        "--entropy=iops=5",
        "--entropy=ops-burst=1",
    ] {
        let out = run_probe("probe.test=boot", &[bad], DEADLINE);
        assert_eq!(out.code(), Some(2), "{bad}: {}", out.stderr);
    }
}

#[test]
fn put_entropy_before_boot_and_400_after() {
    let dir = TempDir::new("entropy-api");
    let socket = dir.path().join("api.sock");
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    assert!(
        vm_config(&socket).get("entropy").is_none(),
        "no device unless configured"
    );
    let probe = probe_bin();
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "probe.test=rng,{KEEP_RUNNING}"}}"#,
        probe.display()
    );
    for (path, body) in [
        ("/boot-source", boot.as_str()),
        (
            "/entropy",
            r#"{"rate_limiter": {"ops": {"size": 0, "refill_time": 100}}}"#,
        ),
        ("/entropy", "{}"),
    ] {
        let (status, text) = http(&socket, "PUT", path, Some(body));
        assert_eq!(status, 204, "PUT {path} {body}: {text}");
    }
    let (status, text) = http(&socket, "PUT", "/entropy", Some(r#"{"bogus": true}"#));
    assert_eq!(status, 400, "{text}");
    assert_eq!(vm_config(&socket)["entropy"], serde_json::json!({}));
    let (status, text) = http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{text}");
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let line = rng_pass_line(&vm.stdout(), &vm.stderr());
    assert!(line.contains("bytes=65536"), "{line}");
    // After boot: refused, and the running device is unchanged.
    let (status, text) = http(&socket, "PUT", "/entropy", Some("{}"));
    assert_eq!(status, 400, "{text}");
    assert_eq!(vm_config(&socket)["entropy"], serde_json::json!({}));
    assert_eq!(metric(&socket, "ferry_entropy_bytes_total"), 65536);
    assert_eq!(metric(&socket, "ferry_entropy_throttled_total"), 0);
    assert_eq!(metric(&socket, "ferry_entropy_bad_buffers_total"), 0);
}

#[test]
fn a_rate_limited_device_throttles_and_still_delivers_every_byte() {
    let dir = TempDir::new("entropy-rl");
    // 40 000 B/s: buckets of 4 000 bytes per 100 ms, each 4 KiB request larger than the bucket,
    // so the limiter puts the queue to sleep after the very first request whatever the timing.
    let cmdline = format!("probe.test=rng,{KEEP_RUNNING} probe.rng_kib=32");
    let (mut vm, socket) = spawn_probe(
        dir.path(),
        "vm",
        &cmdline,
        &["--entropy=bps=40000,ops=1000"],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let line = rng_pass_line(&vm.stdout(), &vm.stderr());
    assert!(line.contains("bytes=32768"), "{line}");
    wait_for_socket(&socket, DEADLINE);
    assert!(metric(&socket, "ferry_entropy_throttled_total") >= 1);
    assert_eq!(metric(&socket, "ferry_entropy_bytes_total"), 32768);
    assert_eq!(
        vm_config(&socket)["entropy"]["rate_limiter"],
        serde_json::json!({
            "bandwidth": {"size": 4000, "refill_time": 100},
            "ops": {"size": 100, "refill_time": 100}
        })
    );
}

#[test]
fn snapshot_and_restore_keep_the_device_serving() {
    const ROUND_OK: &str = " ok\n";
    let dir = TempDir::new("entropy-snap");
    let cmdline = "probe.test=rng probe.rng_kib=16 probe.rng_rounds=0";
    let (mut vm, socket) = spawn_probe(dir.path(), "source", cmdline, &["--entropy=ops=50"]);
    vm.wait_for_occurrences(ROUND_OK, 2, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let snap = dir.path().join("snap");
    let out = ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let state: Value =
        serde_json::from_slice(&std::fs::read(snap.join("vmstate")).unwrap()).unwrap();
    let devices = state["virtio"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["id"], "entropy");
    assert_eq!(
        devices[0]["model"]["rate_limiter"]["ops"]["config"]["size"],
        5
    );
    assert_eq!(state["config"]["entropy"]["rate_limiter"]["ops"]["size"], 5);
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
    // Rounds read and checked by the guest after the restore. The first one may have been
    // mostly read before the snapshot (counters start at zero here): the two after it were
    // served entirely by the restored device.
    restored.wait_for_occurrences(ROUND_OK, 3, DEADLINE);
    assert!(
        !restored.stdout().contains("FAIL"),
        "{}\n{}",
        restored.stdout(),
        restored.stderr()
    );
    assert!(metric(&socket2, "ferry_entropy_bytes_total") >= 2 * 16384);
    assert_eq!(
        vm_config(&socket2)["entropy"]["rate_limiter"]["ops"]["size"],
        5
    );
}

#[test]
fn live_migration_carries_the_device_and_its_limiter() {
    const ROUND_OK: &str = " ok\n";
    let dir = TempDir::new("entropy-mig");
    let listen = format!("unix:{}", dir.path().join("migration.sock").display());
    let cmdline = "probe.test=rng probe.rng_kib=16 probe.rng_rounds=0";
    let (mut source, source_socket) =
        spawn_probe(dir.path(), "source", cmdline, &["--entropy=bps=1M"]);
    source.wait_for_occurrences(ROUND_OK, 2, DEADLINE);
    wait_for_socket(&source_socket, DEADLINE);
    let dest_socket = dir.path().join("dest.sock");
    let mut dest = FerryProcess::spawn(
        dir.path(),
        "dest",
        &[
            "receive",
            "--listen",
            &listen,
            "--api-socket",
            dest_socket.to_str().unwrap(),
        ],
    );
    // A migration started before the destination listens fails cleanly; retry until it took.
    let mut out = ctl(&source_socket, &["migrate", "--to", &listen], DEADLINE);
    for _ in 0..100 {
        if out.code() == Some(0) || !source.is_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = ctl(&source_socket, &["migrate", "--to", &listen], DEADLINE);
    }
    assert_eq!(out.code(), Some(0), "migrate: {}{}", out.stdout, out.stderr);
    assert_eq!(
        source.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        source.stderr()
    );
    wait_for_socket(&dest_socket, DEADLINE);
    // The guest goes on reading and checking rounds on the destination; the first may have
    // started on the source, the two after it come entirely from the destination's device.
    dest.wait_for_occurrences(ROUND_OK, 3, DEADLINE);
    assert!(
        !dest.stdout().contains("FAIL"),
        "{}\n{}",
        dest.stdout(),
        dest.stderr()
    );
    assert!(metric(&dest_socket, "ferry_entropy_bytes_total") >= 2 * 16384);
    assert_eq!(
        vm_config(&dest_socket)["entropy"]["rate_limiter"]["bandwidth"]["size"],
        1 << 20
    );
}
