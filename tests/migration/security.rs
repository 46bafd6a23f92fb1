//! A migration port that admits only its peers: TLS with mutual certificates and the PSK channel
//! carry a real migration; a client without credentials, with a certificate from another CA or
//! with the wrong key, and a recorded session replayed, are refused while the destination keeps
//! waiting — and the destination's disk is never opened until its real peer arrives. A stream
//! that names `/etc/shadow` or a block device outside the allow-list is refused with the path.
//!
//! "Opened" is observed with inotify (`IN_OPEN` on the disk file): the kernel queues the event
//! whenever any process opens the file, so reading the queue after the refusal has been logged
//! says whether the destination touched it, without any timing assumption.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;

const REFUSED: &str = "migration: refused a connection";

/// Watches a file for opens by any process.
struct OpenWatch(OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> Self {
        // SAFETY: plain inotify calls; the fd is checked and owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path and our inotify fd.
        let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0, "inotify_add_watch {}", path.display());
        Self(owned)
    }

    /// Whether anything opened the file since the watch began (or since the last call).
    fn opened(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer from our non-blocking inotify fd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

/// Test PKI generated for this run (never committed): one CA for the peers, one stranger CA.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn issue(dir: &Path, name: &str, ca: &(rcgen::Certificate, rcgen::KeyPair)) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = make_ca("ferry test CA");
        let other = make_ca("someone else's CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.0.pem()).unwrap();
        Self {
            ca: ca_path,
            server: issue(dir, "dest", &ca),
            client: issue(dir, "source", &ca),
            stranger: issue(dir, "stranger", &other),
        }
    }

    fn flags(&self, (cert, key): &(PathBuf, PathBuf)) -> Vec<String> {
        [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-ca",
            self.ca.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A small dirty-loop source that also has a disk `data` in its configuration (the destination
/// maps it to a disk of its own, which the test watches).
fn start_small_source(dir: &Path) -> (FerryProcess, PathBuf) {
    let disk = dir.join("source-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.join("source.sock");
    let probe = probe_bin();
    let disk_flag = format!("path={},id=data", disk.display());
    let mut source = FerryProcess::spawn(
        dir,
        "source",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=dirty probe.dirty_mib=32 probe.dirty_rate_mib=64",
            "--memory",
            "256M",
            "--exit-device",
            "--disk",
            &disk_flag,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    source.wait_for_output("probe: dirty: running", DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    (source, socket)
}

/// Waits until `proc`'s stderr holds `text` `count` times.
fn wait_for_stderr(proc: &mut FerryProcess, text: &str, count: usize) {
    let start = Instant::now();
    while proc.stderr().matches(text).count() < count {
        assert!(
            proc.is_running(),
            "exited before logging {text:?}: {}",
            proc.stderr()
        );
        assert!(
            start.elapsed() < DEADLINE,
            "no {text:?} ×{count}: {}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP relay from a fresh port to `to` that records what the client sent.
fn recording_relay(to: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
        let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut s_in, mut c_out) = (server, client);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s_in, &mut c_out);
            let _ = c_out.shutdown(std::net::Shutdown::Both);
        });
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut r = rec.lock().unwrap();
                // The handshake and the configuration are at the start; keep the first MiB.
                if r.len() < 1 << 20 {
                    r.extend_from_slice(&buf[..n]);
                }
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(std::net::Shutdown::Write);
    });
    (port, recorded)
}

/// Sends `bytes` to the destination on `port` and reads until it hangs up.
fn replay(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut s, &mut std::io::sink());
}

/// A plaintext migration opening: hello and a CONFIG naming `path` as drive `data`.
fn plaintext_opening(path: &str) -> Vec<u8> {
    let config = ferry_api::VmConfig {
        drives: vec![ferry_api::DriveConfig {
            drive_id: "data".into(),
            path_on_host: path.into(),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            direct: None,
            chap_secret_file: None,
            rate_limiter: None,
        }],
        ..Default::default()
    };
    let json = serde_json::to_vec(&serde_json::json!({"config": config, "verify": false})).unwrap();
    let mut v = b"FERRYMIG".to_vec();
    v.extend_from_slice(&1u32.to_le_bytes());
    v.push(0x01);
    v.extend_from_slice(&(json.len() as u32).to_le_bytes());
    v.extend_from_slice(&json);
    v
}

/// The source's migration failed and its guest still runs there.
fn assert_refused_at_source(out: &common::RunOutput, source_socket: &Path) {
    assert_ne!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let info = ctl(source_socket, &["info"], DEADLINE);
    assert!(info.stdout.contains("state: Running"), "{}", info.stdout);
}

/// Counter continuity on the destination, as in the plain migration tests.
fn assert_guest_goes_on(dest_socket: &Path, dir: &Path) {
    wait_for_socket(dest_socket, DEADLINE);
    let first = snapshot(dest_socket, &dir.join("at-switchover"));
    let at = passes(&first);
    wait_for_progress(dest_socket, dir, "later", at);
}

#[test]
fn tls_admits_only_its_peers_and_a_recorded_session_cannot_be_replayed() {
    let dir = TempDir::new("mig-tls");
    let pki = Pki::new(dir.path());
    let (source, source_socket) = start_small_source(dir.path());
    let dest_disk = dir.path().join("dest-disk.img");
    std::fs::write(&dest_disk, vec![0u8; 1 << 20]).unwrap();
    let watch = OpenWatch::new(&dest_disk);
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let map = format!("data={}", dest_disk.display());
    let mut dest_args = pki.flags(&pki.server);
    dest_args.extend(["--disk-map".to_string(), map.clone()]);
    let (mut dest, dest_socket) =
        start_destination_with(dir.path(), "dest", &listen, &strs(&dest_args));
    wait_listening(&listen);

    // No credentials: the source speaks plaintext to a TLS port.
    let out = migrate(&source_socket, &listen, &[]);
    assert_refused_at_source(&out, &source_socket);
    wait_for_stderr(&mut dest, REFUSED, 1);
    // A certificate from another CA.
    let stranger = pki.flags(&pki.stranger);
    let out = migrate(&source_socket, &listen, &strs(&stranger));
    assert_refused_at_source(&out, &source_socket);
    wait_for_stderr(&mut dest, REFUSED, 2);
    // A plaintext opening naming the disk, sent by hand.
    replay(port, &plaintext_opening(dest_disk.to_str().unwrap()));
    wait_for_stderr(&mut dest, REFUSED, 3);
    assert!(
        !watch.opened(),
        "a refused client made the destination open its disk"
    );
    assert!(dest.is_running(), "{}", dest.stderr());

    // The real peer, through a relay that records what it sends.
    let (relay, recorded) = recording_relay(port);
    let via = format!("tcp:127.0.0.1:{relay}");
    let client = pki.flags(&pki.client);
    let mut args = strs(&client);
    args.push("--verify");
    let out = migrate(&source_socket, &via, &args);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("state: migrated"), "{}", out.stdout);
    assert!(
        watch.opened(),
        "the admitted migration opened the mapped disk"
    );
    assert_guest_goes_on(&dest_socket, dir.path());
    drop(source);

    // The recorded TLS session, replayed to a fresh destination, gets nowhere.
    let recorded = recorded.lock().unwrap().clone();
    assert!(recorded.len() > 1000, "recorded {} bytes", recorded.len());
    let port2 = free_port();
    let listen2 = format!("tcp:127.0.0.1:{port2}");
    let (mut dest2, _) = start_destination_with(dir.path(), "dest2", &listen2, &strs(&dest_args));
    wait_listening(&listen2);
    let watch2 = OpenWatch::new(&dest_disk);
    replay(port2, &recorded);
    wait_for_stderr(&mut dest2, REFUSED, 1);
    assert!(!watch2.opened(), "a replayed session opened the disk");
    assert!(dest2.is_running());
}

#[test]
fn psk_admits_only_key_holders_and_a_recorded_session_cannot_be_replayed() {
    let dir = TempDir::new("mig-psk");
    let key = dir.path().join("psk");
    let wrong = dir.path().join("wrong");
    std::fs::write(&key, (0..64u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(&wrong, (1..65u8).collect::<Vec<_>>()).unwrap();
    let (source, source_socket) = start_small_source(dir.path());
    let dest_disk = dir.path().join("dest-disk.img");
    std::fs::write(&dest_disk, vec![0u8; 1 << 20]).unwrap();
    let watch = OpenWatch::new(&dest_disk);
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let map = format!("data={}", dest_disk.display());
    let dest_args = ["--psk-file", key.to_str().unwrap(), "--disk-map", &map];
    let (mut dest, dest_socket) = start_destination_with(dir.path(), "dest", &listen, &dest_args);
    wait_listening(&listen);

    let out = migrate(
        &source_socket,
        &listen,
        &["--psk-file", wrong.to_str().unwrap()],
    );
    assert_refused_at_source(&out, &source_socket);
    wait_for_stderr(&mut dest, REFUSED, 1);
    replay(port, &plaintext_opening(dest_disk.to_str().unwrap()));
    wait_for_stderr(&mut dest, REFUSED, 2);
    assert!(
        !watch.opened(),
        "a refused client made the destination open its disk"
    );

    let (relay, recorded) = recording_relay(port);
    let via = format!("tcp:127.0.0.1:{relay}");
    let out = migrate(
        &source_socket,
        &via,
        &["--psk-file", key.to_str().unwrap(), "--verify"],
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        watch.opened(),
        "the admitted migration opened the mapped disk"
    );
    assert_guest_goes_on(&dest_socket, dir.path());
    drop(source);

    // Replayed: the first handshake message is genuine, but the session keys depend on the new
    // destination's fresh ephemeral key, so the recorded confirmation fails to decrypt.
    let recorded = recorded.lock().unwrap().clone();
    let port2 = free_port();
    let listen2 = format!("tcp:127.0.0.1:{port2}");
    let (mut dest2, _) = start_destination_with(dir.path(), "dest2", &listen2, &dest_args);
    wait_listening(&listen2);
    let watch2 = OpenWatch::new(&dest_disk);
    replay(port2, &recorded);
    wait_for_stderr(&mut dest2, REFUSED, 1);
    assert!(
        dest2.stderr().contains("key confirmation"),
        "{}",
        dest2.stderr()
    );
    assert!(!watch2.opened(), "a replayed session opened the disk");
}

/// A pretend source over a Unix socket sends a configuration naming `path`; returns the
/// destination's ERROR reason.
fn offer(dir: &Path, name: &str, path: &str, extra: &[&str]) -> (String, FerryProcess) {
    let sock = dir.join(format!("{name}.sock"));
    let listen = format!("unix:{}", sock.display());
    let (dest, _) = start_destination_with(dir, name, &listen, extra);
    wait_listening(&listen);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(&plaintext_opening(path)).unwrap();
    let mut replies = Vec::new();
    let _ = s.read_to_end(&mut replies);
    // HELLO_OK, then ERROR (0xff, u32 length, reason).
    assert_eq!(replies.first(), Some(&0x81), "{replies:?}");
    assert_eq!(replies.get(1), Some(&0xff), "{replies:?}");
    (String::from_utf8_lossy(&replies[6..]).into_owned(), dest)
}

#[test]
fn a_stream_naming_etc_shadow_or_a_foreign_block_device_is_refused_with_the_path() {
    let dir = TempDir::new("mig-admit");
    let (why, mut dest) = offer(dir.path(), "shadow", "/etc/shadow", &[]);
    assert!(why.contains("/etc/shadow"), "{why}");
    assert_eq!(dest.wait_exit(DEADLINE).code(), Some(1));
    let err = dest.stderr();
    assert!(err.contains("refused before opening anything"), "{err}");
    assert!(err.contains("/etc/shadow"), "{err}");

    // A block device outside the allow-list (the allow-list names only this test's directory).
    let backing = dir.path().join("backing.img");
    std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", backing.to_str().unwrap()])
        .output()
        .expect("losetup (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(device.clone());
    let watch = OpenWatch::new(Path::new(&device));
    let allow = dir.path().to_str().unwrap().to_string();
    let (why, mut dest) = offer(dir.path(), "blockdev", &device, &["--allow-path", &allow]);
    assert!(why.contains(&device), "{why}");
    assert!(why.contains("outside every --allow-path"), "{why}");
    assert_eq!(dest.wait_exit(DEADLINE).code(), Some(1));
    assert!(!watch.opened(), "the refused block device was opened");

    // A symlink inside the allowed directory does not lead out of it.
    let link = dir.path().join("innocent.img");
    std::os::unix::fs::symlink(&device, &link).unwrap();
    let (why, mut dest) = offer(
        dir.path(),
        "symlink",
        link.to_str().unwrap(),
        &["--allow-path", &allow],
    );
    assert!(why.contains(&format!("resolved: {device}")), "{why}");
    assert_eq!(dest.wait_exit(DEADLINE).code(), Some(1));
    assert!(
        !watch.opened(),
        "the block device behind the symlink was opened"
    );
}

#[test]
fn plain_tcp_off_loopback_needs_insecure() {
    let out = common::run_ferry(
        &[
            "receive",
            "--listen",
            &format!("tcp:0.0.0.0:{}", free_port()),
        ],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.error_line().contains("--insecure"), "{}", out.stderr);
}
