//! Live migration and snapshots with real ferry processes: a probe running the ring-3 `dirty`
//! loop moves between two ferries over Unix and TCP sockets; failures leave the guest running on
//! the source; garbage streams are refused; snapshots restore with the guest's progress intact.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ctl, free_port, probe_bin, read_u64_at, wait_for_socket, FerryProcess, TempDir};
use ferry_probe::{DIRTY_COUNTER_GPA, DIRTY_MAGIC, DIRTY_REGION_GPA};

/// Bounds on waits for events (a line, a socket, an exit): generous, so a loaded host only makes
/// a test slower, never red. Never a performance assertion.
const DEADLINE: Duration = Duration::from_secs(120);
/// Bound on waiting for the guest's dirty loop to finish another pass.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(300);
const DIRTY_MIB: u64 = 256;

/// A source guest: the probe dirtying `DIRTY_MIB` MiB at `rate` MiB/s, with an API socket.
fn start_source(dir: &Path, name: &str, rate: u64) -> (FerryProcess, PathBuf) {
    start_source_with(dir, name, DIRTY_MIB, rate, "512M")
}

fn start_source_with(
    dir: &Path,
    name: &str,
    mib: u64,
    rate: u64,
    memory: &str,
) -> (FerryProcess, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let probe = probe_bin();
    let cmdline = format!("probe.test=dirty probe.dirty_mib={mib} probe.dirty_rate_mib={rate}");
    let mut source = FerryProcess::spawn(
        dir,
        name,
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--memory",
            memory,
            "--exit-device",
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    source.wait_for_output("probe: dirty: running", DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    (source, socket)
}

/// `ferry receive` on `listen`, with an API socket once the guest runs.
fn start_destination(dir: &Path, name: &str, listen: &str) -> (FerryProcess, PathBuf) {
    start_destination_with(dir, name, listen, &[])
}

/// `ferry receive` on `listen` with `extra` flags (maps, allow-list, credentials).
fn start_destination_with(
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> (FerryProcess, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let mut args = vec![
        "receive",
        "--listen",
        listen,
        "--api-socket",
        socket.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let dest = FerryProcess::spawn(dir, name, &args);
    (dest, socket)
}

/// Waits until `ferry receive` listens on `listen`.
fn wait_listening(listen: &str) {
    let start = Instant::now();
    loop {
        let up = if let Some(path) = listen.strip_prefix("unix:") {
            // Listening sockets show flag 00010000 (__SO_ACCEPTCON) in /proc/net/unix.
            std::fs::read_to_string("/proc/net/unix")
                .unwrap_or_default()
                .lines()
                .any(|l| l.ends_with(path) && l.split_whitespace().nth(3) == Some("00010000"))
        } else {
            let addr = listen.trim_start_matches("tcp:");
            // A connect would be taken as the migration: look for the listening socket instead.
            let port = addr.rsplit(':').next().unwrap();
            std::fs::read_to_string("/proc/net/tcp")
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3
                        && f[3] == "0A"
                        && f[1].ends_with(&format!(":{:04X}", port.parse::<u16>().unwrap()))
                })
        };
        if up {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{listen} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How much the probe writes, flushes, reads back and verifies in each round of its disk test.
const BLK_KIB: usize = 8 * 1024;

/// A source guest whose probe runs disk rounds until the VM ends: round `r` writes the blk pattern
/// of seed `seed + r - 1` over the first [`BLK_KIB`] of `disk_flag`'s disk, flushes, reads it back
/// and verifies it. Returned once the first round verified, so the guest's disk I/O is running
/// (and keeps running) whenever the migration starts, however fast or slow the host is.
fn start_source_with_disk(dir: &Path, disk_flag: &str, seed: u64) -> (FerryProcess, PathBuf) {
    let socket = dir.join("source.sock");
    let probe = probe_bin();
    let cmdline =
        format!("probe.test=blk probe.blk_write={seed} probe.blk_kib={BLK_KIB} probe.blk_rounds=0");
    let mut source = FerryProcess::spawn(
        dir,
        "source",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--memory",
            "256M",
            "--exit-device",
            "--disk",
            disk_flag,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    source.wait_for_output(ROUND_VERIFIED_1, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    (source, socket)
}

use common::{ROUND_VERIFIED, ROUND_VERIFIED_1};

/// After a migration that overlapped the probe's disk rounds: the guest's disk I/O went on on the
/// destination (two more rounds verified there, so at least one wholly written and read back on
/// the destination), no round failed on either side, and the disk holds exactly what the guest's
/// round counter says it wrote: read with the destination paused, every sector carries the
/// pattern of the last verified round or of the round in progress. `read_disk` reads the first
/// [`BLK_KIB`] KiB of the shared disk.
fn assert_disk_io_survived(
    source: &FerryProcess,
    dest: &mut FerryProcess,
    dest_socket: &Path,
    dir: &Path,
    seed: u64,
    read_disk: impl Fn() -> Vec<u8>,
) {
    dest.wait_for_occurrences(ROUND_VERIFIED, 2, DEADLINE);
    let (src_out, dst_out) = (source.stdout(), dest.stdout());
    assert!(
        !src_out.contains("probe: blk: FAIL") && !dst_out.contains("probe: blk: FAIL"),
        "a disk round failed:\n{src_out}\n---\n{dst_out}"
    );
    let verified = common::assert_disk_holds_blk_rounds(dest_socket, dir, seed, read_disk);
    assert!(verified >= 3, "only {verified} rounds verified:\n{dst_out}");
}

/// Snapshot through the API (`ferry ctl snapshot`), guest resumed afterwards. Returns the dir.
fn snapshot(socket: &Path, dir: &Path) -> PathBuf {
    let out = ctl(
        socket,
        &["snapshot", "--to", dir.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(
        out.code(),
        Some(0),
        "snapshot failed: {}{}",
        out.stdout,
        out.stderr
    );
    dir.to_path_buf()
}

/// Completed passes recorded by the dirty loop in a snapshot's memory file.
fn passes(snapshot_dir: &Path) -> u64 {
    let memory = snapshot_dir.join("memory");
    assert_eq!(
        read_u64_at(&memory, DIRTY_COUNTER_GPA + 8),
        DIRTY_MAGIC,
        "dirty test not running"
    );
    read_u64_at(&memory, DIRTY_COUNTER_GPA)
}

/// Every page of the region carries its own index and a pass number consistent with the counter.
fn assert_stamps_valid(snapshot_dir: &Path) {
    let memory = std::fs::read(snapshot_dir.join("memory")).unwrap();
    let counter = passes(snapshot_dir);
    let pages = DIRTY_MIB * 256;
    for page in 0..pages {
        let at = (DIRTY_REGION_GPA + page * 4096) as usize;
        let index = u64::from_le_bytes(memory[at..at + 8].try_into().unwrap());
        let pass = u64::from_le_bytes(memory[at + 8..at + 16].try_into().unwrap());
        if pass != 0 {
            assert_eq!(index, page, "page {page} carries index {index}");
        }
        if pass == 0 {
            // Not written yet: only possible while the first pass runs.
            assert_eq!(
                (index, counter),
                (0, 0),
                "page {page} unwritten after {counter} passes"
            );
            continue;
        }
        assert!(
            pass >= counter && pass <= counter + 1,
            "page {page} has pass {pass}, counter {counter}"
        );
    }
}

/// Takes snapshots until the dirty loop has completed more than `after` passes; returns the
/// snapshot directory that showed it (the others are removed: each holds the guest's memory).
/// The deadline only guards against a guest that stopped: on a loaded host a pass over hundreds
/// of MiB of fresh pages can take many seconds.
fn wait_for_progress(socket: &Path, dir: &Path, tag: &str, after: u64) -> PathBuf {
    let start = Instant::now();
    for i in 0.. {
        let snap = snapshot(socket, &dir.join(format!("{tag}-{i}")));
        let now = passes(&snap);
        if now > after {
            return snap;
        }
        let _ = std::fs::remove_dir_all(&snap);
        assert!(
            start.elapsed() < PROGRESS_DEADLINE,
            "the guest made no progress in {PROGRESS_DEADLINE:?}: still {now} passes (was {after})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    unreachable!()
}

fn migrate(source_socket: &Path, to: &str, extra: &[&str]) -> common::RunOutput {
    let mut args = vec!["migrate", "--to", to];
    args.extend_from_slice(extra);
    ctl(source_socket, &args, DEADLINE)
}

fn migrate_and_check(listen: &str, tag: &str) {
    let dir = TempDir::new(tag);
    let (mut source, source_socket) = start_source(dir.path(), "source", 128);
    let (mut dest, dest_socket) = start_destination(dir.path(), "dest", listen);
    wait_listening(listen);

    let out = migrate(&source_socket, listen, &["--verify"]);
    assert_eq!(out.code(), Some(0), "migrate: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("state: migrated"), "{}", out.stdout);

    // The source forgets the guest and exits 0; the destination runs it.
    let status = source.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "source: {}", source.stderr());
    // Both sides log one JSON line with the figures.
    assert!(
        source.stderr().contains(r#""side":"source""#),
        "{}",
        source.stderr()
    );
    assert!(
        dest.stderr().contains(r#""side":"destination""#),
        "{}",
        dest.stderr()
    );
    wait_for_socket(&dest_socket, DEADLINE);
    let info = ctl(&dest_socket, &["info"], DEADLINE);
    assert!(info.stdout.contains("state: Running"), "{}", info.stdout);

    let first = snapshot(&dest_socket, &dir.path().join("snap1"));
    let at_switchover = passes(&first);
    assert_stamps_valid(&first);
    let later = wait_for_progress(&dest_socket, dir.path(), "later", at_switchover);
    assert_stamps_valid(&later);
    assert!(dest.is_running());
}

#[test]
fn migrates_over_a_unix_socket() {
    let dir = TempDir::new("mig-unix-sock");
    let listen = format!("unix:{}", dir.path().join("migration.sock").display());
    migrate_and_check(&listen, "mig-unix");
}

#[test]
fn migrates_over_tcp() {
    let listen = format!("tcp:127.0.0.1:{}", free_port());
    migrate_and_check(&listen, "mig-tcp");
}

/// A destination that takes the hello and the configuration like a real one, then reads
/// `after` bytes of the memory stream and hangs up: the connection is lost in the middle of the
/// first round whatever the speed of either side (the source cannot finish without the
/// destination's acknowledgements).
fn dying_destination(listener: std::os::unix::net::UnixListener, after: u64) {
    use std::io::{Read, Write};
    let (mut s, _) = listener.accept().unwrap();
    let mut hello = [0u8; 12];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"FERRYMIG");
    s.write_all(&[0x81]).unwrap();
    let mut kind = [0u8; 1];
    s.read_exact(&mut kind).unwrap();
    assert_eq!(kind[0], 0x01, "the configuration comes first");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    std::io::copy(
        &mut (&mut s).take(u64::from(u32::from_le_bytes(len))),
        &mut std::io::sink(),
    )
    .unwrap();
    s.write_all(&[0x82]).unwrap();
    let read = std::io::copy(&mut (&mut s).take(after), &mut std::io::sink()).unwrap();
    assert_eq!(read, after, "the source stopped sending early");
}

#[test]
fn a_destination_lost_mid_stream_leaves_the_guest_running_and_a_retry_works() {
    let dir = TempDir::new("mig-kill");
    // Half a gigabyte of guest data: the first round is long, and the destination hangs up after
    // 64 MiB of it.
    let (source, source_socket) = start_source_with(dir.path(), "source", 512, 2048, "768M");
    // Let the first pass fill the region so the first round has it all to send.
    let first = wait_for_progress(&source_socket, dir.path(), "warm", 0);
    assert!(passes(&first) >= 1);
    let path = dir.path().join("m1.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let dying = std::thread::spawn(move || dying_destination(listener, 64 << 20));
    let out = migrate(
        &source_socket,
        &format!("unix:{}", path.display()),
        &["--detach"],
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    dying
        .join()
        .expect("the dying destination saw the start of the stream");
    let start = Instant::now();
    loop {
        let status = ctl(&source_socket, &["migration-status"], DEADLINE);
        if status.stdout.contains("state: failed") {
            assert!(status.stdout.contains("error:"), "{}", status.stdout);
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no failure reported: {}{}\n--- source\n{}",
            status.stdout,
            status.stderr,
            source.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The guest still runs on the source and keeps counting.
    let info = ctl(&source_socket, &["info"], DEADLINE);
    assert!(info.stdout.contains("state: Running"), "{}", info.stdout);
    let a = passes(&snapshot(&source_socket, &dir.path().join("s1")));
    wait_for_progress(&source_socket, dir.path(), "s2", a);

    // A second attempt to a healthy destination succeeds.
    let listen2 = format!("unix:{}", dir.path().join("m2.sock").display());
    let (_dest2, dest2_socket) = start_destination(dir.path(), "dest2", &listen2);
    wait_listening(&listen2);
    let out = migrate(
        &source_socket,
        &listen2,
        &["--force-switchover", "--max-iterations", "5"],
    );
    assert_eq!(out.code(), Some(0), "retry: {}{}", out.stdout, out.stderr);
    wait_for_socket(&dest2_socket, DEADLINE);
    let info = ctl(&dest2_socket, &["info"], DEADLINE);
    assert!(info.stdout.contains("state: Running"), "{}", info.stdout);
}

#[test]
fn garbage_and_truncated_streams_are_refused_cleanly() {
    use std::io::Write;
    let dir = TempDir::new("mig-garbage");
    for (name, bytes) in [
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("version", {
            let mut v = b"FERRYMIG".to_vec();
            v.extend_from_slice(&99u32.to_le_bytes());
            v
        }),
        ("truncated", {
            let mut v = b"FERRYMIG".to_vec();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.push(0x01);
            v.extend_from_slice(&1000u32.to_le_bytes());
            v.extend_from_slice(b"{\"config\":");
            v
        }),
        ("huge-config", {
            let mut v = b"FERRYMIG".to_vec();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.push(0x01);
            v.extend_from_slice(&u32::MAX.to_le_bytes());
            v
        }),
    ] {
        let path = dir.path().join(format!("{name}.sock"));
        let listen = format!("unix:{}", path.display());
        let (mut dest, _) = start_destination(dir.path(), name, &listen);
        wait_listening(&listen);
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _ = stream.write_all(&bytes);
        drop(stream);
        let status = dest.wait_exit(DEADLINE);
        let stderr = dest.stderr();
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("error: incoming migration failed"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn snapshot_restore_keeps_the_guest_going() {
    let dir = TempDir::new("snapshot");
    let (source, source_socket) = start_source(dir.path(), "source", 512);
    let snap = wait_for_progress(&source_socket, dir.path(), "snap", 0);
    let saved = passes(&snap);
    drop(source);

    let socket = dir.path().join("restored.sock");
    let mut restored = FerryProcess::spawn(
        dir.path(),
        "restored",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    wait_for_socket(&socket, DEADLINE);
    let later = wait_for_progress(&socket, dir.path(), "later", saved);
    assert_stamps_valid(&later);
    assert!(restored.is_running());
}

#[test]
fn migrates_a_guest_with_a_disk_and_only_the_destination_keeps_it_open() {
    let dir = TempDir::new("mig-disk");
    let disk = dir.path().join("shared.img");
    std::fs::write(&disk, vec![0u8; BLK_KIB * 1024 + (1 << 20)]).unwrap();
    let disk_flag = format!("path={},id=data", disk.display());
    let (mut source, socket) = start_source_with_disk(dir.path(), &disk_flag, 11);

    let listen = format!("unix:{}", dir.path().join("m.sock").display());
    // The destination admits the shared disk through its allow-list (not a map).
    let allow = dir.path().to_str().unwrap().to_string();
    let (mut dest, dest_socket) =
        start_destination_with(dir.path(), "dest", &listen, &["--allow-path", &allow]);
    wait_listening(&listen);
    let out = migrate(&socket, &listen, &["--verify"]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(source.wait_exit(DEADLINE).code(), Some(0));
    wait_for_socket(&dest_socket, DEADLINE);
    assert_disk_io_survived(&source, &mut dest, &dest_socket, dir.path(), 11, || {
        std::fs::read(&disk).unwrap()[..BLK_KIB * 1024].to_vec()
    });

    // The destination holds the disk open; the source process is gone.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", dest.child.id())).unwrap();
    let open = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == disk);
    assert!(
        open,
        "the destination does not have {} open",
        disk.display()
    );
    // The snapshot taken by the check above describes the disk by its id on the destination.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("paused").join("vmstate")).unwrap())
            .unwrap();
    let device = &state["virtio"]["devices"][0];
    assert_eq!(device["id"], "data");
    assert_eq!(device["transport"]["device_type"], 2);
}

/// A pretend destination that follows the protocol up to COMMIT and then vanishes without
/// acknowledging it.
fn vanishing_destination(listener: std::os::unix::net::UnixListener) {
    use std::io::{Read, Write};
    let (mut s, _) = listener.accept().unwrap();
    let mut u8buf = [0u8; 1];
    let read_u32 = |s: &mut std::os::unix::net::UnixStream| {
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        u32::from_le_bytes(b)
    };
    let skip = |s: &mut std::os::unix::net::UnixStream, n: u64| {
        std::io::copy(&mut s.take(n), &mut std::io::sink()).unwrap();
    };
    let mut hello = [0u8; 12];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"FERRYMIG");
    s.write_all(&[0x81]).unwrap();
    loop {
        s.read_exact(&mut u8buf).unwrap();
        match u8buf[0] {
            0x01 => {
                let len = read_u32(&mut s);
                skip(&mut s, u64::from(len));
                s.write_all(&[0x82]).unwrap();
            }
            0x02 => {
                skip(&mut s, 8);
                let len = read_u32(&mut s);
                skip(&mut s, u64::from(len));
            }
            0x03 => skip(&mut s, 16),
            0x04 => skip(&mut s, 4),
            0x05 => {
                let len = read_u32(&mut s);
                skip(&mut s, u64::from(len));
                s.write_all(&[0x83]).unwrap();
            }
            // COMMIT: drop the connection without COMMITTED.
            0x07 => return,
            other => panic!("unexpected message {other:#x}"),
        }
    }
}

#[test]
fn a_lost_commit_acknowledgement_leaves_the_source_paused_in_doubt() {
    let dir = TempDir::new("mig-doubt");
    let (mut source, source_socket) = start_source(dir.path(), "source", 16);
    let path = dir.path().join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = std::thread::spawn(move || vanishing_destination(listener));
    let out = migrate(&source_socket, &format!("unix:{}", path.display()), &[]);
    fake.join()
        .expect("the pretend destination saw the whole protocol");
    assert_eq!(
        out.code(),
        Some(3),
        "in doubt exits 3: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("doubt"), "{}", out.stderr);
    // The source never resumed the guest; it exits with the in-doubt status.
    assert_eq!(
        source.wait_exit(DEADLINE).code(),
        Some(3),
        "{}",
        source.stderr()
    );
    assert!(source.stderr().contains("in doubt"), "{}", source.stderr());
    assert!(
        !source.stderr().contains("side\":\"source"),
        "no completion may be reported"
    );
}

#[path = "../devices/tests/iscsi_support/mod.rs"]
mod iscsi_support;

/// Who may connect and what an incoming guest may open (tests/migration/security.rs).
#[path = "migration/security.rs"]
mod security;

#[test]
fn migrates_a_guest_on_an_iscsi_lun_opened_by_the_destination_itself() {
    let target = iscsi_support::Tgtd::start(64 << 20, iscsi_support::Setup::default());
    let dir = TempDir::new("mig-iscsi");
    let disk_flag = format!("path={},id=san", target.url(1));
    let (mut source, socket) = start_source_with_disk(dir.path(), &disk_flag, 12);
    let listen = format!("unix:{}", dir.path().join("m.sock").display());
    // The destination names the LUN itself.
    let map = format!("san={}", target.url(1));
    let (mut dest, dest_socket) =
        start_destination_with(dir.path(), "dest", &listen, &["--disk-map", &map]);
    wait_listening(&listen);
    let out = migrate(&socket, &listen, &["--verify"]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(source.wait_exit(DEADLINE).code(), Some(0));
    wait_for_socket(&dest_socket, DEADLINE);
    assert!(dest.is_running());
    assert_disk_io_survived(&source, &mut dest, &dest_socket, dir.path(), 12, || {
        target.read_file(0, BLK_KIB * 1024)
    });
    // The destination logged in to the target itself.
    let metrics = ctl(&dest_socket, &["metrics"], DEADLINE);
    assert!(
        metrics
            .stdout
            .contains("ferry_block_requests_total{drive=\"san\"}"),
        "{}",
        metrics.stdout
    );
}
