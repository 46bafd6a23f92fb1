//! The orchestrator API with the real ferry binary: configure and boot a guest entirely over the
//! Unix socket, drive it, read its configuration and metrics back, and check that the command
//! line and the API build the same VM.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ctl, probe_bin, wait_for_socket, FerryProcess, TempDir};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

/// One HTTP/1.1 request over the socket with a JSON body; returns (status, body).
fn http(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let body = body.map(Value::to_string);
    common::http(socket, method, path, body.as_deref())
}

fn ok(socket: &Path, method: &str, path: &str, body: Value) {
    let (status, text) = http(socket, method, path, Some(&body));
    assert_eq!(status, 204, "{method} {path}: {text}");
}

fn get(socket: &Path, path: &str) -> Value {
    let (status, text) = http(socket, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

fn refused(socket: &Path, method: &str, path: &str, body: Value, needle: &str) {
    let (status, text) = http(socket, method, path, Some(&body));
    assert_eq!(status, 400, "{method} {path}: {text}");
    let fault: Value = serde_json::from_str(&text).unwrap();
    let message = fault["fault_message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{method} {path}: {message}");
}

/// A network namespace for the test's tap device, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("ferry-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip");
        assert!(status.success(), "ip netns add {name}");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ferry run --api-socket` inside `ns` (so its tap lives there), plus any flags.
fn spawn_in_netns(dir: &Path, ns: &Netns, socket: &Path, flags: &[&str]) -> FerryProcess {
    let ferry = common::ferry_bin();
    let mut args = vec!["netns", "exec", &ns.0, ferry.to_str().unwrap()];
    args.extend_from_slice(&["run", "--api-socket", socket.to_str().unwrap()]);
    args.extend_from_slice(flags);
    let stdout = dir.join("vm.out");
    let stderr = dir.join("vm.err");
    let child = Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawning ferry");
    FerryProcess {
        child,
        stdout_path: stdout,
        stderr_path: stderr,
    }
}

const PROBE_ARGS: &str = "probe.test=boot,blk,dirty probe.dirty_mib=1 probe.dirty_rate_mib=1";

#[test]
fn configure_boot_and_drive_a_guest_over_the_socket() {
    let dir = TempDir::new("api-flow");
    let ns = Netns::new("api");
    let disk = dir.path().join("root.img");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    let socket = dir.path().join("api.sock");
    let mut vm = spawn_in_netns(dir.path(), &ns, &socket, &[]);
    wait_for_socket(&socket, DEADLINE);

    let info = get(&socket, "/");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "ferry");
    let probe = probe_bin();
    ok(
        &socket,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 256}),
    );
    ok(
        &socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe, "boot_args": PROBE_ARGS}),
    );
    ok(
        &socket,
        "PUT",
        "/drives/root",
        json!({"drive_id": "root", "path_on_host": disk, "is_root_device": true, "is_read_only": false}),
    );
    ok(
        &socket,
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": "ferrytap0", "guest_mac": "52:54:00:12:34:56"}),
    );
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let out = vm.stdout();
    assert!(
        out.contains("probe: boot: PASS mem_mib=255 cpus=2"),
        "{out}"
    );
    assert!(out.contains("probe: blk: PASS dev=0 sectors=2048"), "{out}");
    assert_eq!(get(&socket, "/")["state"], "Running");

    // Pause and resume.
    ok(&socket, "PATCH", "/vm", json!({"state": "Paused"}));
    assert_eq!(get(&socket, "/")["state"], "Paused");
    ok(&socket, "PATCH", "/vm", json!({"state": "Resumed"}));
    assert_eq!(get(&socket, "/")["state"], "Running");

    // The configuration round-trips.
    let config = get(&socket, "/vm/config");
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 256);
    assert_eq!(config["boot-source"]["boot_args"], PROBE_ARGS);
    assert_eq!(config["drives"][0]["drive_id"], "root");
    assert_eq!(config["drives"][0]["path_on_host"], disk.to_str().unwrap());
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"],
        "ferrytap0"
    );
    assert_eq!(
        config["network-interfaces"][0]["guest_mac"],
        "52:54:00:12:34:56"
    );

    // Metrics: vCPU exits and device counters.
    let (status, metrics) = http(&socket, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(sample("ferry_vcpu_exits_total{reason=\"io_out\"}") > 100.0);
    assert!(sample("ferry_block_requests_total{drive=\"root\"}") >= 1.0);
    assert!(sample("ferry_block_read_bytes_total{drive=\"root\"}") >= 262144.0);
    sample("ferry_net_tx_frames_total{iface=\"eth0\"}");

    // What is refused after boot, with reasons.
    refused(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
        "running",
    );
    refused(
        &socket,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
        "after boot",
    );
    refused(
        &socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": "/x"}),
        "after boot",
    );
    refused(
        &socket,
        "PUT",
        "/drives/other",
        json!({"drive_id": "other", "path_on_host": "/x", "is_root_device": false, "is_read_only": false}),
        "after boot",
    );
    // Bad requests never stop the guest.
    let (status, _) = http(&socket, "PUT", "/machine-config", None);
    assert_eq!(status, 400);
    let (status, _) = http(&socket, "GET", "/no/such/path", None);
    assert_eq!(status, 404);
    let (status, _) = http(&socket, "DELETE", "/machine-config", None);
    assert_eq!(status, 405);
    assert_eq!(get(&socket, "/")["state"], "Running");
    assert!(vm.is_running());

    // Ctrl-Alt-Del goes to the guest's keyboard (this guest ignores it); PowerOff ends ferry
    // with status 0.
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    assert_eq!(get(&socket, "/")["state"], "Running");
    ok(
        &socket,
        "PUT",
        "/actions",
        json!({"action_type": "PowerOff"}),
    );
    let status = vm.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
}

#[test]
fn ferry_ctl_drives_a_running_guest() {
    let dir = TempDir::new("api-ctl");
    let socket = dir.path().join("api.sock");
    let probe = probe_bin();
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1",
            "--exit-device",
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let out = ctl(&socket, &["info"], DEADLINE);
    assert!(out.stdout.contains("state: Running"), "{}", out.stdout);
    let out = ctl(&socket, &["--json", "info"], DEADLINE);
    let info: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(ctl(&socket, &["pause"], DEADLINE).code(), Some(0));
    assert!(ctl(&socket, &["info"], DEADLINE)
        .stdout
        .contains("state: Paused"));
    // Pausing twice is an error with the server's reason.
    let out = ctl(&socket, &["pause"], DEADLINE);
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("paused"), "{}", out.stderr);
    assert_eq!(ctl(&socket, &["resume"], DEADLINE).code(), Some(0));
    let out = ctl(&socket, &["metrics"], DEADLINE);
    assert!(
        out.stdout.contains("ferry_vcpu_exits_total"),
        "{}",
        out.stdout
    );
    let out = ctl(&socket, &["migration-status"], DEADLINE);
    assert!(out.stdout.contains("state: idle"), "{}", out.stdout);
    assert_eq!(ctl(&socket, &["shutdown"], DEADLINE).code(), Some(0));
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0));
    // A dead socket is a clear error.
    let out = ctl(&socket, &["info"], DEADLINE);
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.starts_with("error:"), "{}", out.stderr);
}

#[test]
fn command_line_and_api_build_the_same_vm() {
    let dir = TempDir::new("api-same");
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let probe = probe_bin();
    let cmdline = "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1";

    let cli_socket = dir.path().join("cli.sock");
    let disk_flag = format!("path={},id=data,readonly=on", disk.display());
    let mut cli_vm = FerryProcess::spawn(
        dir.path(),
        "cli",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            cmdline,
            "--cpus",
            "2",
            "--memory",
            "128M",
            "--disk",
            &disk_flag,
            "--api-socket",
            cli_socket.to_str().unwrap(),
        ],
    );
    cli_vm.wait_for_output("probe: dirty: running", DEADLINE);

    let api_socket = dir.path().join("api.sock");
    let mut api_vm = FerryProcess::spawn(
        dir.path(),
        "api",
        &["run", "--api-socket", api_socket.to_str().unwrap()],
    );
    wait_for_socket(&api_socket, DEADLINE);
    ok(
        &api_socket,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 128}),
    );
    ok(
        &api_socket,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe, "boot_args": cmdline}),
    );
    ok(
        &api_socket,
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true}),
    );
    ok(
        &api_socket,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    api_vm.wait_for_output("probe: dirty: running", DEADLINE);

    assert_eq!(
        get(&cli_socket, "/vm/config"),
        get(&api_socket, "/vm/config")
    );
}
