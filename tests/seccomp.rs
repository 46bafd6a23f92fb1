//! seccomp on every thread, end to end: the real ferry binary on the probe guest.
//!
//! * every thread of a running ferry is filtered (`Seccomp: 2`, `NoNewPrivs: 1` in
//!   `/proc/<pid>/task/<tid>/status`) and is named after its kind;
//! * `--seccomp off` leaves them unfiltered;
//! * a syscall outside a thread kind's list kills the whole process with SIGSYS. Debug builds of
//!   ferry make threads of the kind named in `FERRY_SECCOMP_TRIGGER` call one (`getppid`, in no
//!   list) right after installing their filter;
//! * `ferry firecracker --seccomp-filter FILE` applies the filters of a Firecracker filter file.

mod common;

#[path = "../devices/tests/iscsi_support/mod.rs"]
mod iscsi_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{ctl, probe_bin, wait_for_socket, FerryProcess, TempDir};
use ferry_vmm::seccomp::{compile, firecracker, ThreadKind};
use iscsi_support::{Setup, Tgtd};

const DEADLINE: Duration = Duration::from_secs(120);
const RUNNING: &str = "probe: dirty: running";
const DIRTY: &str = "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1";

/// Spawns `ferry args…` with `FERRY_SECCOMP_TRIGGER=trigger` when given.
fn spawn(dir: &Path, name: &str, args: &[&str], trigger: Option<&str>) -> FerryProcess {
    let stdout_path = dir.join(format!("{name}.out"));
    let stderr_path = dir.join(format!("{name}.err"));
    let mut cmd = Command::new(common::ferry_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .env_remove("FERRY_SECCOMP_TRIGGER");
    if let Some(kind) = trigger {
        cmd.env("FERRY_SECCOMP_TRIGGER", kind);
    }
    FerryProcess {
        child: cmd.spawn().expect("spawning ferry"),
        stdout_path,
        stderr_path,
    }
}

/// A running probe guest with two vCPUs, a disk (`disk`: a path or iSCSI URL; a new file when
/// `None`), the entropy device and the API socket; returns the process and the socket.
fn guest(
    dir: &Path,
    name: &str,
    disk: Option<&str>,
    extra: &[&str],
    trigger: Option<&str>,
) -> (FerryProcess, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let file = dir.join(format!("{name}.img"));
    std::fs::write(&file, vec![0u8; 1 << 20]).expect("disk file");
    let disk = format!("path={}", disk.unwrap_or(file.to_str().expect("utf-8")));
    let probe = probe_bin();
    let mut args = vec![
        "run",
        "--kernel",
        probe.to_str().expect("utf-8"),
        "--cmdline",
        DIRTY,
        "--cpus",
        "2",
        "--memory",
        "128M",
        "--exit-device",
        "--disk",
        disk.as_str(),
        "--entropy",
        "--api-socket",
        socket.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    (spawn(dir, name, &args, trigger), socket)
}

/// Name, seccomp mode and no_new_privs of each thread of `pid`.
fn threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {key} in {status}"))
        };
        let number = |key: &str| field(key).parse::<u32>().expect("number");
        out.push((field("Name:"), number("Seccomp:"), number("NoNewPrivs:")));
    }
    out.sort();
    out
}

/// The thread kind a name says, for every thread ferry creates.
fn kind(name: &str) -> Option<&'static str> {
    let kinds = [
        ("ferry_vcpu", "vcpu"),
        ("ferry_devices", "devices"),
        ("ferry-api", "api"),
        ("ferry_haltwatch", "haltwatch"),
        ("ferry_migration", "migration"),
        ("ferry_receive", "receive"),
        ("ferry_throttle", "throttle"),
        ("ferry_iscsi", "iscsi"),
        ("ferry_log", "sink"),
        ("ferry_metrics", "sink"),
    ];
    if name == "ferry" {
        return Some("controller");
    }
    kinds
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, k)| *k)
}

/// Kernel workers that live in the process's thread group but never run user code: io_uring's
/// (`iou-wrk-*`, `iou-sqp-*`) and KVM's NX huge page recovery (`kvm-nx-lpage-re`). They make no
/// syscalls of their own for a filter to judge.
fn kernel_worker(name: &str) -> bool {
    name.starts_with("iou-") || name.starts_with("kvm-")
}

fn assert_sigsys(status: ExitStatus, what: &str, p: &FerryProcess) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{what}: expected death by SIGSYS, got {status}\n--- stdout\n{}\n--- stderr\n{}",
        p.stdout(),
        p.stderr()
    );
}

#[test]
fn every_thread_of_a_running_guest_is_filtered_and_named() {
    let target = Tgtd::start(4 << 20, Setup::default());
    let dir = TempDir::new("seccomp-threads");
    let url = target.url(1);
    let (mut p, socket) = guest(dir.path(), "guest", Some(&url), &[], None);
    p.wait_for_output(RUNNING, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let threads = threads(p.child.id());
    let mut kinds = Vec::new();
    for (name, mode, no_new_privs) in &threads {
        if kernel_worker(name) {
            continue;
        }
        let k = kind(name).unwrap_or_else(|| panic!("thread {name:?} of no known kind"));
        assert_eq!(*mode, 2, "thread {name} is not filtered: {threads:?}");
        assert_eq!(*no_new_privs, 1, "thread {name}: {threads:?}");
        kinds.push(k);
    }
    for k in ["controller", "vcpu", "devices", "api", "haltwatch", "iscsi"] {
        assert!(kinds.contains(&k), "no {k} thread among {threads:?}");
    }
    assert_eq!(
        threads
            .iter()
            .filter(|t| t.0.starts_with("ferry_vcpu"))
            .count(),
        2
    );
}

#[test]
fn seccomp_off_leaves_every_thread_unfiltered() {
    let dir = TempDir::new("seccomp-off");
    let (mut p, socket) = guest(dir.path(), "guest", None, &["--seccomp", "off"], None);
    p.wait_for_output(RUNNING, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let threads = threads(p.child.id());
    assert!(threads.len() >= 5, "{threads:?}");
    for (name, mode, _) in threads.iter().filter(|t| !kernel_worker(&t.0)) {
        assert_eq!(*mode, 0, "thread {name} is filtered: {threads:?}");
    }
}

/// The threads every running guest has: each kills the process when it steps outside its list.
#[test]
fn a_forbidden_syscall_on_any_guest_thread_kills_ferry() {
    for trigger in ["controller", "vcpu", "devices", "api", "haltwatch"] {
        let dir = TempDir::new("seccomp-kill");
        let (mut p, _) = guest(dir.path(), "guest", None, &[], Some(trigger));
        let status = p.wait_exit(DEADLINE);
        assert_sigsys(status, trigger, &p);
    }
}

/// `--seccomp log` lets the call through (and logs it): the guest keeps running.
#[test]
fn seccomp_log_lets_a_forbidden_syscall_through() {
    let dir = TempDir::new("seccomp-log");
    let (mut p, socket) = guest(
        dir.path(),
        "guest",
        None,
        &["--seccomp", "log"],
        Some("vcpu"),
    );
    p.wait_for_output(RUNNING, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let threads = threads(p.child.id());
    assert!(
        threads.iter().all(|t| t.1 == 2 || kernel_worker(&t.0)),
        "{threads:?}"
    );
    assert!(p.is_running());
}

#[test]
fn a_forbidden_syscall_on_the_iscsi_session_thread_kills_ferry() {
    let target = Tgtd::start(4 << 20, Setup::default());
    let dir = TempDir::new("seccomp-iscsi");
    let url = target.url(1);
    let (mut p, _) = guest(dir.path(), "guest", Some(&url), &[], Some("iscsi"));
    let status = p.wait_exit(DEADLINE);
    assert_sigsys(status, "iscsi", &p);
}

#[test]
fn a_forbidden_syscall_on_the_migration_threads_kills_ferry() {
    // Sending: the source's ferry_migration thread.
    let dir = TempDir::new("seccomp-mig");
    let (mut source, source_socket) = guest(dir.path(), "source", None, &[], Some("migration"));
    source.wait_for_output(RUNNING, DEADLINE);
    wait_for_socket(&source_socket, DEADLINE);
    let listen = format!("unix:{}", dir.path().join("mig.sock").display());
    let _dest = spawn(dir.path(), "dest", &["receive", "--listen", &listen], None);
    let _ = ctl(&source_socket, &["migrate", "--to", &listen], DEADLINE);
    let status = source.wait_exit(DEADLINE);
    assert_sigsys(status, "migration", &source);

    // Receiving over the API: the ferry_receive thread.
    let socket = dir.path().join("receiver.sock");
    let mut receiver = spawn(
        dir.path(),
        "receiver",
        &["run", "--api-socket", socket.to_str().expect("utf-8")],
        Some("receive"),
    );
    wait_for_socket(&socket, DEADLINE);
    let listen = format!("unix:{}", dir.path().join("mig2.sock").display());
    let body = format!(r#"{{"listen_url": "{listen}"}}"#);
    // The process may die before it answers: the answer is not looked at.
    put_ignoring_answer(&socket, "/migration/receive", &body);
    let status = receiver.wait_exit(DEADLINE);
    assert_sigsys(status, "receive", &receiver);
}

#[test]
fn a_forbidden_syscall_on_the_log_writer_kills_ferry() {
    let dir = TempDir::new("seccomp-sink");
    let log = dir.path().join("ferry.log");
    let socket = dir.path().join("fc.sock");
    let mut p = spawn(
        dir.path(),
        "fc",
        &[
            "firecracker",
            "--api-sock",
            socket.to_str().expect("utf-8"),
            "--log-path",
            log.to_str().expect("utf-8"),
        ],
        Some("sink"),
    );
    let status = p.wait_exit(DEADLINE);
    assert_sigsys(status, "sink", &p);
}

/// Sends one request on the API socket and reads whatever comes back, failing on nothing.
fn put_ignoring_answer(socket: &Path, path: &str, body: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return;
    };
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let _ = stream.write_all(request.as_bytes());
    let _ = stream.read_to_end(&mut Vec::new());
}

/// Writes a Firecracker filter file (seccompiler-bin's format): ferry's API list for `api`,
/// `vcpu`'s list for `vcpu`, and an empty `vmm` program (no filter for those threads: the lists
/// compiled here name this test's pid for `tgkill`, not ferry's).
fn filter_file(dir: &Path, vcpu: ThreadKind) -> PathBuf {
    let api = compile(ThreadKind::Api, false).expect("api filter");
    let vcpu_program = compile(vcpu, false).expect("vcpu filter");
    let path = dir.join(format!("filters-{}.bpf", vcpu.name()));
    std::fs::write(
        &path,
        firecracker::serialize(&[("vmm", &Vec::new()), ("api", &api), ("vcpu", &vcpu_program)]),
    )
    .expect("filter file");
    path
}

fn firecracker_config(dir: &Path) -> PathBuf {
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": probe_bin(), "boot_args": "probe.test=boot,smp"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": false},
        "drives": [],
    });
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).expect("config");
    path
}

#[test]
fn firecracker_seccomp_filter_file_is_applied() {
    let dir = TempDir::new("seccomp-fc");
    let config = firecracker_config(dir.path());
    let run = |filters: &Path| {
        let child = Command::new(common::ferry_bin())
            .args([
                "firecracker",
                "--no-api",
                "--config-file",
                config.to_str().expect("utf-8"),
                "--seccomp-filter",
                filters.to_str().expect("utf-8"),
            ])
            .env_remove("FERRY_SECCOMP_TRIGGER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ferry");
        common::wait_with_deadline(child, DEADLINE)
    };
    // ferry's own lists in the file: the guest boots and powers off.
    let good = filter_file(dir.path(), ThreadKind::Vcpu);
    let out = run(&good);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    // A vcpu filter without KVM_RUN (the log writer's list): the first KVM_RUN kills ferry,
    // so the file's filters are what is installed.
    let bad = filter_file(dir.path(), ThreadKind::Sink);
    let out = run(&bad);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // Not a filter file: refused with what is expected.
    let json = dir.path().join("filters.json");
    std::fs::write(&json, r#"{"vmm": {"default_action": "allow"}}"#).expect("json");
    let out = run(&json);
    assert_eq!(out.code(), Some(152), "{}", out.stderr);
    assert!(out.stderr.contains("seccompiler-bin"), "{}", out.stderr);
}
