//! The vsock device with the real ferry binary and the probe guest's `vsock` test (a polled
//! driver that echoes what host clients send and connects out): Firecracker's host side
//! (`CONNECT <port>` / `OK <port>` on `uds_path`, guest connections to `<uds_path>_P`),
//! refusals both ways, many connections at once, `PUT /vsock` and `GET /vm/config`, and a
//! snapshot restore after which the guest gets the transport-reset event.
//!
//! Data is checked by CRC-32 on both sides; no assertion depends on timing or on the order in
//! which concurrent connections are served.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::{ctl, http, probe_bin, wait_for_socket, FerryProcess, TempDir};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(180);
const LISTENING: &str = "probe: vsock: listening";
const KEEP_RUNNING: &str = "dirty probe.dirty_mib=1 probe.dirty_rate_mib=1";

/// The probe with the exit device and an API socket (not waited for).
fn spawn_probe(dir: &Path, name: &str, cmdline: &str, extra: &[&str]) -> (FerryProcess, PathBuf) {
    let flags = [&["--exit-device"], extra].concat();
    FerryProcess::spawn_probe_with_api(dir, name, cmdline, &flags)
}

/// Pseudo-random bytes (xorshift), different per seed.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Connects to the guest's `port` through `uds`; returns the stream after `OK <host port>`,
/// or `None` when ferry closed it (the guest refused).
fn connect(uds: &Path, port: u32) -> Option<(UnixStream, u32)> {
    let mut s = UnixStream::connect(uds).expect("connecting to uds_path");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    // Byte by byte: nothing after the line may be consumed here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading the acknowledgement: {e}"),
        }
    }
    let line = String::from_utf8(line).unwrap();
    let host_port = line
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected acknowledgement {line:?}"));
    Some((s, host_port))
}

/// Sends `len` bytes through a guest echo connection (writing and reading at once) and checks
/// that the same bytes come back, then that the connection ends.
fn echo(uds: &Path, port: u32, seed: u64, len: usize) -> u32 {
    let (s, host_port) = connect(uds, port).expect("the guest accepts");
    let sent = data(seed, len);
    let mut writer = s.try_clone().unwrap();
    let expect = crc32(&sent);
    let w = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        // Half close: the guest sees the end of the stream and closes its side.
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(len);
    let mut r = s;
    r.read_to_end(&mut back).expect("reading the echo");
    w.join().unwrap();
    assert_eq!(back.len(), len, "echoed length");
    assert_eq!(crc32(&back), expect, "echoed bytes");
    host_port
}

/// A host service on `<uds>_<port>` that echoes one connection until EOF.
fn host_echo_service(uds: &Path, port: u32) -> thread::JoinHandle<usize> {
    let path = format!("{}_{port}", uds.display());
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            s.write_all(&buf[..n]).unwrap();
            total += n;
        }
    })
}

#[test]
fn host_and_guest_connections_echo_refuse_and_run_many_at_once() {
    let dir = TempDir::new("vsock-echo");
    let uds = dir.path().join("v.sock");
    let service = host_echo_service(&uds, 7000);
    let vsock = format!("cid=3,uds={}", uds.display());
    let cmdline = "probe.test=vsock probe.vsock_accept=34 probe.vsock_connect=7000 \
                   probe.vsock_bytes=131072 probe.vsock_refused=7001";
    let (mut vm, _) = spawn_probe(dir.path(), "vm", cmdline, &["--vsock", &vsock]);
    vm.wait_for_output(LISTENING, DEADLINE);
    // A port the guest does not listen on: closed without OK.
    assert!(connect(&uds, 9999).is_none(), "refused by the guest");
    // One large stream (more than the device's 256 KiB window), then 33 at once.
    let first = echo(&uds, 52, 1, 600 << 10);
    // Host ports are assigned from 2^30 as on Firecracker; the refused attempt took the first.
    assert_eq!(first, (1 << 30) + 1);
    let uds2 = uds.clone();
    let many: Vec<_> = (0..33u64)
        .map(|i| {
            let uds = uds2.clone();
            thread::spawn(move || echo(&uds, 52, 100 + i, 16 << 10))
        })
        .collect();
    let mut ports: Vec<u32> = many.into_iter().map(|t| t.join().unwrap()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 33, "each connection its own host port");
    let status = vm.wait_exit(DEADLINE);
    let out = vm.stdout();
    let pass = out
        .lines()
        .find(|l| l.starts_with("probe: vsock: PASS"))
        .unwrap_or_else(|| panic!("--- stdout\n{out}\n--- stderr\n{}", vm.stderr()));
    assert!(pass.contains("cid=3 served=34 echoed_out=131072"), "{pass}");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        service.join().unwrap(),
        131072,
        "the host service echoed it all"
    );
}

#[test]
fn put_vsock_before_boot_shows_in_config_and_is_refused_after() {
    let dir = TempDir::new("vsock-api");
    let socket = dir.path().join("api.sock");
    let uds = dir.path().join("v.sock");
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "probe.test=vsock,{KEEP_RUNNING}"}}"#,
        probe_bin().display()
    );
    let device = format!(
        r#"{{"vsock_id": "vsock0", "guest_cid": 42, "uds_path": "{}"}}"#,
        uds.display()
    );
    for (path, body) in [("/boot-source", boot.as_str()), ("/vsock", device.as_str())] {
        let (status, text) = http(&socket, "PUT", path, Some(body));
        assert_eq!(status, 204, "PUT {path}: {text}");
    }
    let (status, text) = http(
        &socket,
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 1, "uds_path": "/x"}"#),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{text}");
    vm.wait_for_output(LISTENING, DEADLINE);
    echo(&uds, 52, 7, 4096);
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    assert!(vm.stdout().contains("cid=42 served=1"), "{}", vm.stdout());
    let (status, text) = http(&socket, "GET", "/vm/config", None);
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["vsock"]["guest_cid"], 42);
    assert_eq!(config["vsock"]["uds_path"], uds.to_str().unwrap());
    let (status, text) = http(&socket, "PUT", "/vsock", Some(&device));
    assert_eq!(status, 400, "after boot: {text}");
    let (status, text) = http(&socket, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let sample = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(sample("ferry_vsock_conns_added_total"), 1);
    assert_eq!(sample("ferry_vsock_tx_bytes_total"), 4096);
    assert_eq!(sample("ferry_vsock_rx_bytes_total"), 4096);
}

#[test]
fn a_restored_guest_is_told_its_connections_were_reset() {
    let dir = TempDir::new("vsock-snap");
    let uds = dir.path().join("v.sock");
    let vsock = format!("cid=5,uds={}", uds.display());
    let cmdline = "probe.test=vsock probe.vsock_accept=1 probe.vsock_resets=1";
    let (mut vm, socket) = spawn_probe(dir.path(), "source", cmdline, &["--vsock", &vsock]);
    vm.wait_for_output(LISTENING, DEADLINE);
    // One connection served, one left open across the snapshot.
    echo(&uds, 52, 3, 8192);
    let (mut open, _) = connect(&uds, 52).expect("accepted");
    open.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    open.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
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
    assert_eq!(state["config"]["vsock"]["guest_cid"], 5);
    assert_eq!(state["virtio"]["devices"][0]["id"], "vsock");
    drop(vm);
    // The source's client sees its connection end with the source.
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);

    // Without a map or an allowed directory, the snapshot's socket path is refused.
    let refused = common::run_ferry(&["run", "--restore", snap.to_str().unwrap()], DEADLINE);
    assert_ne!(refused.code(), Some(0));
    assert!(refused.stderr.contains("--vsock-map"), "{}", refused.stderr);

    let uds2 = dir.path().join("restored.sock");
    let mut restored = FerryProcess::spawn(
        dir.path(),
        "restored",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--vsock-map",
            uds2.to_str().unwrap(),
        ],
    );
    let status = restored.wait_exit(DEADLINE);
    let out = restored.stdout();
    assert!(
        out.contains("probe: vsock: transport reset 1"),
        "{out}\n{}",
        restored.stderr()
    );
    assert!(
        out.contains("PASS cid=5 served=1 echoed_out=0 resets=1"),
        "{out}"
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        uds2.exists(),
        "the restored device listens on the mapped path"
    );

    // Firecracker's way: PUT /snapshot/load with vsock_override.
    let socket3 = dir.path().join("loaded.api");
    let mut loaded = FerryProcess::spawn(
        dir.path(),
        "loaded",
        &["run", "--api-socket", socket3.to_str().unwrap()],
    );
    wait_for_socket(&socket3, DEADLINE);
    let uds3 = dir.path().join("override.sock");
    let load = serde_json::json!({
        "snapshot_path": snap.join("vmstate"),
        "mem_backend": {"backend_type": "File", "backend_path": snap.join("memory")},
        "vsock_override": {"uds_path": uds3},
        "resume_vm": false,
    });
    let (status, text) = http(&socket3, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(status, 204, "{text}");
    let (_, text) = http(&socket3, "GET", "/vm/config", None);
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["vsock"]["uds_path"], uds3.to_str().unwrap());
    assert_eq!(config["vsock"]["guest_cid"], 5);
    let (status, text) = http(&socket3, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        loaded.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        loaded.stderr()
    );
    let out = loaded.stdout();
    assert!(
        out.contains("PASS cid=5 served=1 echoed_out=0 resets=1"),
        "{out}"
    );
}

/// `ctl migrate` to `listen` until it took or `until` says to stop (a migration started before
/// the destination listens fails cleanly).
fn migrate(
    source_socket: &Path,
    listen: &str,
    mut until: impl FnMut() -> bool,
) -> common::RunOutput {
    let mut out = ctl(source_socket, &["migrate", "--to", listen], DEADLINE);
    for _ in 0..100 {
        if out.code() == Some(0) || until() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        out = ctl(source_socket, &["migrate", "--to", listen], DEADLINE);
    }
    out
}

#[test]
fn live_migration_needs_the_socket_mapped_and_resets_the_guests_connections() {
    let dir = TempDir::new("vsock-mig");
    let uds = dir.path().join("v.sock");
    let vsock = format!("cid=3,uds={}", uds.display());
    let cmdline = "probe.test=vsock probe.vsock_accept=1 probe.vsock_resets=1";
    let (mut source, source_socket) =
        spawn_probe(dir.path(), "source", cmdline, &["--vsock", &vsock]);
    source.wait_for_output(LISTENING, DEADLINE);
    echo(&uds, 52, 11, 32 << 10);
    wait_for_socket(&source_socket, DEADLINE);

    // A destination that neither maps nor allows the source's socket path refuses the guest.
    let listen = format!("unix:{}", dir.path().join("refuse.sock").display());
    let mut refusing =
        FerryProcess::spawn(dir.path(), "refusing", &["receive", "--listen", &listen]);
    let out = migrate(&source_socket, &listen, || !refusing.is_running());
    assert_ne!(
        out.code(),
        Some(0),
        "migrated to a destination that refuses"
    );
    refusing.wait_exit(DEADLINE);
    assert!(
        refusing.stderr().contains("--vsock-map"),
        "{}",
        refusing.stderr()
    );
    assert!(source.is_running(), "the source keeps its guest");

    let listen = format!("unix:{}", dir.path().join("migration.sock").display());
    let dest_uds = dir.path().join("dest.sock");
    let mut dest = FerryProcess::spawn(
        dir.path(),
        "dest",
        &[
            "receive",
            "--listen",
            &listen,
            "--vsock-map",
            dest_uds.to_str().unwrap(),
        ],
    );
    let out = migrate(&source_socket, &listen, || !source.is_running());
    assert_eq!(out.code(), Some(0), "migrate: {}{}", out.stdout, out.stderr);
    assert_eq!(
        source.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        source.stderr()
    );
    let status = dest.wait_exit(DEADLINE);
    let out = dest.stdout();
    assert!(
        out.contains("probe: vsock: transport reset 1"),
        "{out}\n{}",
        dest.stderr()
    );
    assert!(
        out.contains("PASS cid=3 served=1 echoed_out=0 resets=1"),
        "{out}"
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        dest_uds.exists(),
        "the destination listens on the mapped path"
    );
}
