//! ferry as a drop-in `firecracker` binary: Firecracker's process command line (started through
//! a symlink named `firecracker`, or as `ferry firecracker …`), its config file, and the API
//! items that must not block on paths a client names (log and metrics FIFOs).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
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

    // ferry's extension: end the VM at once (this guest ignores Ctrl-Alt-Del).
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "PowerOff"}),
    );
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
}

/// A directory with a symlink named `firecracker` to the ferry binary.
fn firecracker_symlink(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("firecracker");
    std::os::unix::fs::symlink(common::ferry_bin(), &link).expect("symlink");
    link
}

/// Spawns `program args…` with output in `dir/<name>.out|.err`.
fn spawn(dir: &Path, name: &str, program: &Path, args: &[&str]) -> FerryProcess {
    let stdout_path = dir.join(format!("{name}.out"));
    let stderr_path = dir.join(format!("{name}.err"));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawning");
    FerryProcess {
        child,
        stdout_path,
        stderr_path,
    }
}

/// Runs `program args…` to completion (with a hang guard).
fn run(program: &Path, args: &[&str]) -> common::RunOutput {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    common::wait_with_deadline(child, DEADLINE)
}

fn get(socket: &Path, path: &str) -> Value {
    let (status, text) = http(socket, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

#[test]
fn firecracker_symlink_serves_the_getting_started_flow() {
    let dir = TempDir::new("fc-api");
    let firecracker = firecracker_symlink(dir.path());
    let socket = dir.path().join("firecracker.socket");
    let mut vm = spawn(
        dir.path(),
        "vm",
        &firecracker,
        &["--api-sock", socket.to_str().unwrap(), "--id", "fc-test-1"],
    );
    wait_for_socket(&socket, DEADLINE);
    let info = get(&socket, "/");
    assert_eq!(info["id"], "fc-test-1");
    assert_eq!(info["state"], "Not started");
    assert_eq!(get(&socket, "/version")["firecracker_version"], "1.7.0");
    let probe = probe_bin();
    ok(
        &socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe, "boot_args": "probe.test=boot"}),
    );
    ok(
        &socket,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vm.wait_for_output("probe: done", DEADLINE);
    // Like Firecracker, the process ends when the guest resets.
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    let out = vm.stdout();
    assert!(out.contains("probe: hello"), "{out}");
    assert!(
        out.contains("probe: boot: PASS mem_mib=127 cpus=1"),
        "{out}"
    );
}

fn write_config(dir: &Path, boot_args: &str) -> std::path::PathBuf {
    let config = json!({
        "boot-source": {"kernel_image_path": probe_bin(), "boot_args": boot_args},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": false},
        "drives": [],
        "network-interfaces": [],
        "metrics": {"metrics_path": dir.join("metrics.json")},
    });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

#[test]
fn config_file_boots_at_once_with_and_without_the_api() {
    let dir = TempDir::new("fc-config");
    let config = write_config(dir.path(), "probe.test=boot,smp");
    // `ferry firecracker --no-api`: boots, and exits with the guest.
    let out = run(
        &common::ferry_bin(),
        &[
            "firecracker",
            "--no-api",
            "--config-file",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("probe: hello"), "{}", out.stdout);
    out.assert_pass("boot");
    out.assert_pass("smp");
    assert!(
        out.stdout.contains("probe: done pass=2 fail=0"),
        "{}",
        out.stdout
    );
    // As Firecracker does, a last metrics line when the guest ends.
    let metrics = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap_or_default();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {metrics}"));
    assert!(
        last["vcpu"]["exit_io_out"].as_u64().is_some_and(|n| n > 0),
        "{metrics}"
    );

    // Through the symlink, with the API: the guest runs before any request.
    let config = write_config(dir.path(), "probe.test=keyboard,poweroff");
    let _ = std::fs::remove_file(dir.path().join("metrics.json"));
    let firecracker = firecracker_symlink(dir.path());
    let socket = dir.path().join("api.sock");
    let mut vm = spawn(
        dir.path(),
        "vm",
        &firecracker,
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--config-file",
            config.to_str().unwrap(),
        ],
    );
    vm.wait_for_output("probe: keyboard: ready", DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    assert_eq!(get(&socket, "/")["state"], "Running");
    assert_eq!(
        get(&socket, "/vm/config")["machine-config"]["vcpu_count"],
        2
    );
    // The config file's metrics path is set: FlushMetrics writes a line there.
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "FlushMetrics"}),
    );
    let metrics_path = dir.path().join("metrics.json");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics_path)
        .unwrap_or_default()
        .contains("utc_timestamp_ms")
    {
        assert!(start.elapsed() < DEADLINE, "no metrics line written");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Firecracker's way to stop a guest: Ctrl-Alt-Del on its keyboard; this guest powers off.
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    assert!(
        vm.stdout().contains("probe: keyboard: PASS ctrl-alt-del=1"),
        "{}",
        vm.stdout()
    );
}

#[test]
fn firecracker_flags_version_and_refusals() {
    let dir = TempDir::new("fc-flags");
    let firecracker = firecracker_symlink(dir.path());
    let ferry = common::ferry_bin();
    // A release-style name, as the jailer executes it, works too.
    let release = dir.path().join("firecracker-v1.7.0-x86_64");
    std::os::unix::fs::symlink(&ferry, &release).expect("symlink");
    for out in [
        run(&firecracker, &["--version"]),
        run(&release, &["--version"]),
        run(&ferry, &["firecracker", "--version"]),
    ] {
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let line = out.stdout.lines().next().unwrap_or_default();
        // Kata Containers reads the second space-separated word as the version.
        assert_eq!(line.split(' ').nth(1), Some("v1.7.0"), "{line}");
        assert!(line.starts_with("Firecracker v1.7.0 (ferry "), "{line}");
    }
    let cases: [(&Path, &[&str], i32, &str); 6] = [
        (
            &firecracker,
            &["--bogus"],
            153,
            "unknown argument '--bogus'",
        ),
        (&ferry, &["firecracker", "--bogus"], 153, "unknown argument"),
        (
            &firecracker,
            &["--no-api"],
            153,
            "--no-api requires --config-file",
        ),
        (
            &ferry,
            &["firecracker", "--no-api"],
            153,
            "requires --config-file",
        ),
        (
            &firecracker,
            &["--seccomp-filter", "/nonexistent/filter.bpf"],
            152,
            "--seccomp-filter /nonexistent/filter.bpf",
        ),
        (&firecracker, &["--level", "loud"], 152, "--level"),
    ];
    for (program, args, code, needle) in cases {
        let out = run(program, args);
        assert_eq!(out.code(), Some(code), "{args:?}: {}", out.stderr);
        assert!(
            out.error_line().contains(needle),
            "{args:?}: {}",
            out.stderr
        );
    }
    let missing = dir.path().join("missing.json");
    let out = run(
        &firecracker,
        &["--no-api", "--config-file", missing.to_str().unwrap()],
    );
    assert_eq!(out.code(), Some(152), "{}", out.stderr);
    assert!(out.error_line().contains("config file"), "{}", out.stderr);
    // Snapshot data format versions.
    let out = run(&firecracker, &["--snapshot-version"]);
    assert_eq!(out.stdout.trim(), "v1.0.0", "{}", out.stderr);
    let state = dir.path().join("vmstate");
    std::fs::write(&state, r#"{"version": 1, "config": {}}"#).unwrap();
    let out = run(
        &ferry,
        &[
            "firecracker",
            "--describe-snapshot",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "v1.0.0");
    let out = run(
        &firecracker,
        &["--describe-snapshot", missing.to_str().unwrap()],
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.error_line().contains("missing.json"), "{}", out.stderr);
    let out = run(&firecracker, &["--help"]);
    assert_eq!(out.code(), Some(0));
    assert!(out.stdout.contains("--api-sock"), "{}", out.stdout);
}
