//! Diff snapshots (Firecracker's `snapshot_type: "Diff"`) with the real ferry binary and the probe's
//! dirty loop: a base Full snapshot, then a chain of diffs, loaded back as base + diffs
//! (`mem_diff_paths`), gives exactly the memory a Full snapshot taken at the last diff holds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{probe_bin, read_u64_at, wait_for_socket, FerryProcess, TempDir};
use ferry_probe::{DIRTY_COUNTER_GPA, DIRTY_MAGIC};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);
/// A hang bound on waiting for the guest's dirty loop to finish another pass.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(300);
const MEM_MIB: u64 = 128;

fn request(socket: &Path, method: &str, path: &str, body: Value) -> (u16, String) {
    common::http(socket, method, path, Some(&body.to_string()))
}

fn ok(socket: &Path, method: &str, path: &str, body: Value) {
    let (status, text) = request(socket, method, path, body);
    assert_eq!(status, 204, "{method} {path}: {text}");
}

fn fault(socket: &Path, method: &str, path: &str, body: Value) -> String {
    let (status, text) = request(socket, method, path, body);
    assert_eq!(status, 400, "{method} {path}: {text}");
    text
}

fn set_state(socket: &Path, state: &str) {
    ok(socket, "PATCH", "/vm", json!({ "state": state }));
}

/// Writes a snapshot of the paused VM; returns its memory file.
fn snapshot(socket: &Path, dir: &Path, name: &str, kind: &str) -> PathBuf {
    let mem = dir.join(format!("{name}.mem"));
    ok(
        socket,
        "PUT",
        "/snapshot/create",
        json!({
            "snapshot_type": kind,
            "snapshot_path": dir.join(format!("{name}.state")),
            "mem_file_path": mem,
        }),
    );
    mem
}

/// Bytes of data a sparse file holds (its allocated blocks).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

fn start(dir: &Path, name: &str) -> (FerryProcess, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let vm = FerryProcess::spawn(
        dir,
        name,
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    (vm, socket)
}

/// Configures and boots the probe's dirty loop over `mib` MiB at `rate` MiB/s through the API
/// (with or without dirty page tracking) and pauses it once it runs.
fn start_paused_dirtier(dir: &Path, mib: u32, rate: u32, track: bool) -> (FerryProcess, PathBuf) {
    let (mut vm, socket) = start(dir, "vm");
    let boot_args = format!("probe.test=dirty probe.dirty_mib={mib} probe.dirty_rate_mib={rate}");
    ok(
        &socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe_bin(), "boot_args": boot_args}),
    );
    ok(
        &socket,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB, "track_dirty_pages": track}),
    );
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    set_state(&socket, "Paused");
    (vm, socket)
}

#[test]
fn a_base_and_a_chain_of_diffs_restore_the_exact_memory() {
    let dir = TempDir::new("snap-diff");
    let (mut vm, socket) = start_paused_dirtier(dir.path(), 2, 4, true);

    // A diff needs a base.
    let text = fault(
        &socket,
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Diff", "snapshot_path": dir.path().join("x.state"), "mem_file_path": dir.path().join("x.mem")}),
    );
    assert!(text.contains("take a Full snapshot first"), "{text}");

    let base = snapshot(&socket, dir.path(), "base", "Full");
    assert_eq!(read_u64_at(&base, DIRTY_COUNTER_GPA + 8), DIRTY_MAGIC);
    let base_passes = read_u64_at(&base, DIRTY_COUNTER_GPA);

    // Diffs until the guest has finished two more passes over its region.
    let mut diffs = Vec::new();
    let started = Instant::now();
    loop {
        set_state(&socket, "Resumed");
        std::thread::sleep(Duration::from_millis(300));
        set_state(&socket, "Paused");
        let diff = snapshot(&socket, dir.path(), &format!("diff{}", diffs.len()), "Diff");
        // The counter page is in a diff only when it changed; a hole reads as 0.
        let passes = read_u64_at(&diff, DIRTY_COUNTER_GPA);
        diffs.push(diff);
        if passes >= base_passes + 2 {
            break;
        }
        assert!(
            started.elapsed() < PROGRESS_DEADLINE,
            "the guest made no progress: {base_passes} passes at the base, {passes} now"
        );
    }
    let full = snapshot(&socket, dir.path(), "full", "Full");
    let full_bytes = std::fs::metadata(&full).unwrap().len();
    assert_eq!(full_bytes, MEM_MIB << 20);
    for diff in &diffs {
        assert_eq!(
            std::fs::metadata(diff).unwrap().len(),
            full_bytes,
            "same layout"
        );
        // Only what changed: the 2 MiB region, the status page and what the probe touched.
        assert!(
            allocated(diff) < 8 << 20,
            "{} holds {} bytes",
            diff.display(),
            allocated(diff)
        );
    }
    set_state(&socket, "Resumed");
    let (status, text) = request(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "PowerOff"}),
    );
    assert_eq!(status, 204, "{text}");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());

    // Base + diffs in a new ferry, left paused: its memory is the Full snapshot's.
    let (mut restored, socket) = start(dir.path(), "restored");
    let diff_paths: Vec<&str> = diffs.iter().map(|d| d.to_str().unwrap()).collect();
    ok(
        &socket,
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": dir.path().join(format!("diff{}.state", diffs.len() - 1)),
            "mem_backend": {"backend_type": "File", "backend_path": base},
            "mem_diff_paths": diff_paths,
            "track_dirty_pages": true,
        }),
    );
    let again = snapshot(&socket, dir.path(), "again", "Full");
    let (want, got) = (
        std::fs::read(&full).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    assert!(
        want == got,
        "memory differs from the Full snapshot at {} bytes",
        want.iter().zip(&got).filter(|(a, b)| a != b).count()
    );
    // A diff right after a load builds on the loaded snapshot; the guest runs on.
    set_state(&socket, "Resumed");
    set_state(&socket, "Paused");
    snapshot(&socket, dir.path(), "after-load", "Diff");
    set_state(&socket, "Resumed");
    assert!(restored.is_running());
    let (status, text) = request(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "PowerOff"}),
    );
    assert_eq!(status, 204, "{text}");
    assert_eq!(restored.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn diff_snapshots_need_dirty_tracking_and_a_missing_diff_is_refused() {
    let dir = TempDir::new("snap-diff-refused");
    let (mut vm, socket) = start_paused_dirtier(dir.path(), 1, 1, false);
    let text = fault(
        &socket,
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Diff", "snapshot_path": dir.path().join("d.state"), "mem_file_path": dir.path().join("d.mem")}),
    );
    assert!(text.contains("track_dirty_pages"), "{text}");
    let base = snapshot(&socket, dir.path(), "base", "Full");
    let (status, _) = request(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "PowerOff"}),
    );
    assert_eq!(status, 204);
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0));

    let (_restored, socket) = start(dir.path(), "restored");
    let text = fault(
        &socket,
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": dir.path().join("base.state"),
            "mem_file_path": base,
            "mem_diff_paths": [dir.path().join("no-such-diff.mem")],
        }),
    );
    assert!(text.contains("no-such-diff.mem"), "{text}");
    // `clock_realtime` needs the wall-clock stamp the saving host's KVM gives with a stable TSC;
    // the state file says whether it has one, and the load follows it.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("base.state")).unwrap())
            .unwrap();
    let stamped = state["kvm"]["clock_has_realtime"]
        .as_bool()
        .unwrap_or(false);
    let realtime_load = json!({"snapshot_path": dir.path().join("base.state"), "mem_file_path": base, "clock_realtime": true, "resume_vm": true});
    if stamped {
        ok(&socket, "PUT", "/snapshot/load", realtime_load);
    } else {
        let text = fault(&socket, "PUT", "/snapshot/load", realtime_load);
        assert!(text.contains("no wall-clock stamp"), "{text}");
        // Nothing was started: a plain load still works on the same ferry.
        ok(
            &socket,
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": dir.path().join("base.state"), "mem_file_path": base, "resume_vm": true}),
        );
    }
    let (_, info) = common::http(&socket, "GET", "/", None);
    assert!(info.contains("Running"), "{info}");
}
