//! ferry as a drop-in `firecracker` binary: Firecracker's process command line (started through
//! a symlink named `firecracker`, or as `ferry firecracker …`), its config file, and the API
//! items that must not block on paths a client names (log and metrics FIFOs).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use common::{probe_bin, wait_for_socket, FerryProcess, TempDir};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

fn http(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let body = body.map(Value::to_string);
    common::http(socket, method, path, body.as_deref())
}

fn ok(socket: &Path, method: &str, path: &str, body: Value) {
    let (status, text) = http(socket, method, path, Some(&body));
    assert_eq!(status, 204, "{method} {path}: {text}");
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `fifo` for reading on a thread and forwards its lines; the receiver gets them with a
/// hang guard instead of blocking the test forever.
fn read_lines(fifo: &Path) -> Receiver<String> {
    let (tx, rx) = channel();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let Ok(file) = std::fs::File::open(&fifo) else {
            return;
        };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line from `lines` that satisfies `want`, within a generous deadline.
fn wait_line(lines: &Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no {what} line within {DEADLINE:?}: {e}"),
        }
    }
}

/// Sends a request on a thread so a server that hangs fails the test instead of blocking it.
fn request_with_hang_guard(socket: &Path, method: &str, path: &str, body: Value) -> (u16, String) {
    let (tx, rx) = channel();
    let socket = socket.to_path_buf();
    let (method, target) = (method.to_string(), path.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(http(&socket, &method, &target, Some(&body)));
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("no answer to {path} within {DEADLINE:?}: the API hangs"))
}

#[test]
fn logger_and_metrics_on_fifos_without_readers_answer_at_once() {
    let dir = TempDir::new("fc-fifo");
    let socket = dir.path().join("api.sock");
    let log_fifo = dir.path().join("log.fifo");
    let metrics_fifo = dir.path().join("metrics.fifo");
    mkfifo(&log_fifo);
    mkfifo(&metrics_fifo);
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);

    // Nobody reads either FIFO yet: both requests must still be answered.
    let (status, text) = request_with_hang_guard(
        &socket,
        "PUT",
        "/logger",
        json!({"log_path": log_fifo, "level": "Info", "show_level": true}),
    );
    assert_eq!(status, 204, "PUT /logger: {text}");
    let (status, text) = request_with_hang_guard(
        &socket,
        "PUT",
        "/metrics",
        json!({"metrics_path": metrics_fifo}),
    );
    assert_eq!(status, 204, "PUT /metrics: {text}");
    // The API still answers other requests.
    let (status, _) = http(&socket, "GET", "/", None);
    assert_eq!(status, 200);

    let probe = probe_bin();
    ok(
        &socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe, "boot_args": "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1"}),
    );
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "FlushMetrics"}),
    );

    // Readers that come only now get what was written meanwhile.
    let logs = read_lines(&log_fifo);
    let line = wait_line(&logs, "log", |l| l.contains("logging to"));
    assert!(line.contains("[anonymous-instance:"), "{line}");
    assert!(line.contains(":INFO] logging to"), "{line}");
    wait_line(&logs, "log", |l| l.contains("guest started"));
    let metrics = read_lines(&metrics_fifo);
    let line = wait_line(&metrics, "metrics", |l| l.starts_with('{'));
    let flushed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(flushed["utc_timestamp_ms"].as_u64().is_some(), "{line}");
    assert!(
        flushed["vcpu"]["exit_io_out"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{line}"
    );
    // InstanceStart and this FlushMetrics.
    assert_eq!(flushed["put_api_requests"]["actions_count"], 2, "{line}");
    assert_eq!(flushed["put_api_requests"]["metrics_count"], 1, "{line}");
    for key in [
        "api_server",
        "block",
        "net",
        "vmm",
        "logger",
        "get_api_requests",
    ] {
        assert!(flushed[key].is_object(), "no {key} in {line}");
    }
    // Metrics are configured once, as on Firecracker.
    let (status, text) = http(
        &socket,
        "PUT",
        "/metrics",
        Some(&json!({"metrics_path": dir.path().join("other")})),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("already configured"), "{text}");

    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
}
