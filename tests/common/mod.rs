//! Helpers shared by the integration tests: locate the built `ferry` and probe binaries, run ferry
//! with a deadline, and parse the probe's report lines.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `ferry` binary cargo built for this test run.
pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// The probe guest, which the `ferry-probe` build script places beside the ferry binary.
pub fn probe_bin() -> PathBuf {
    let path = ferry_bin()
        .parent()
        .map(|dir| dir.join("probe"))
        .expect("ferry binary has a parent directory");
    assert!(
        path.exists(),
        "probe guest not found at {} (cargo build --workspace builds it)",
        path.display()
    );
    path
}

/// What a finished ferry run produced.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The probe's line for `test`, e.g. `probe: boot: PASS mem_mib=511 ...`.
    pub fn probe_line(&self, test: &str) -> Option<&str> {
        let prefix = format!("probe: {test}: ");
        self.stdout.lines().find(|l| l.starts_with(&prefix))
    }

    /// `key=value` from the probe's PASS line for `test`.
    pub fn probe_value(&self, test: &str, key: &str) -> Option<String> {
        let line = self.probe_line(test)?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    }

    /// The single `error: …` line ferry prints for a VMM-side failure (warnings may precede it).
    pub fn error_line(&self) -> &str {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        errors[0]
    }

    pub fn assert_pass(&self, test: &str) {
        let line = self.probe_line(test);
        assert!(
            line.is_some_and(|l| l.contains(": PASS")),
            "probe test {test} did not pass: {line:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `ferry` with `args`, killing it after `deadline`.
pub fn run_ferry(args: &[&str], deadline: Duration) -> RunOutput {
    let child = Command::new(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ferry");
    wait_with_deadline(child, deadline)
}

/// Waits for `child`, killing it at `deadline`, and collects its output.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> RunOutput {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ferry") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("reaping ferry");
            let out = out_reader.join().unwrap_or_default();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "ferry did not finish within {deadline:?} ({status})\n--- stdout\n{out}\n--- stderr\n{err}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    RunOutput {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Boots the probe with `cmdline` and extra flags; the exit device is always on.
pub fn run_probe(cmdline: &str, extra: &[&str], deadline: Duration) -> RunOutput {
    let probe = probe_bin();
    let mut args = vec![
        "run",
        "--kernel",
        probe.to_str().expect("utf-8 path"),
        "--cmdline",
        cmdline,
        "--exit-device",
    ];
    args.extend_from_slice(extra);
    run_ferry(&args, deadline)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Plain characters only: paths end up inside comma-separated flag values.
        let path = std::env::temp_dir().join(format!("ferry-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A ferry process running in the background (a guest with an API socket, or `ferry receive`),
/// with its stdout and stderr in files. Killed when dropped.
pub struct FerryProcess {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl FerryProcess {
    /// Spawns `ferry run` of the probe with `cmdline`, an API socket `dir/<name>.sock` and the
    /// `extra` flags; returns the process and the socket's path (not waited for).
    pub fn spawn_probe_with_api(
        dir: &Path,
        name: &str,
        cmdline: &str,
        extra: &[&str],
    ) -> (Self, PathBuf) {
        let socket = dir.join(format!("{name}.sock"));
        let probe = probe_bin();
        let mut args = vec![
            "run",
            "--kernel",
            probe.to_str().expect("probe path is UTF-8"),
            "--cmdline",
            cmdline,
            "--api-socket",
            socket.to_str().expect("socket path is UTF-8"),
        ];
        args.extend_from_slice(extra);
        (Self::spawn(dir, name, &args), socket)
    }

    /// Spawns `ferry args…`, logging into `dir/<name>.out|.err`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Self {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let child = Command::new(ferry_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawning ferry");
        Self {
            child,
            stdout_path,
            stderr_path,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until stdout contains `text`.
    pub fn wait_for_output(&mut self, text: &str, deadline: Duration) {
        self.wait_for_occurrences(text, 1, deadline);
    }

    /// Waits until stdout contains `text` at least `count` times.
    pub fn wait_for_occurrences(&mut self, text: &str, count: usize, deadline: Duration) {
        let start = Instant::now();
        while self.stdout().matches(text).count() < count {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ferry exited ({status}) before printing {text:?} {count}×\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < deadline,
                "no {text:?} {count}× within {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "ferry still running after {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a Unix socket accepts connections.
pub fn wait_for_socket(path: &Path, deadline: Duration) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            start.elapsed() < deadline,
            "{} never accepted",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `ferry ctl --api-socket SOCKET args…`.
pub fn ctl(socket: &Path, args: &[&str], deadline: Duration) -> RunOutput {
    let mut all = vec!["ctl", "--api-socket", socket.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run_ferry(&all, deadline)
}

/// A little-endian u64 at byte `offset` of a file.
pub fn read_u64_at(path: &Path, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("opening file");
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, offset).expect("reading u64");
    u64::from_le_bytes(buf)
}

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it again right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request over a Unix socket; returns (status, body).
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("writing request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The probe's line after its first disk round (`probe.blk_rounds`) read back what it wrote.
pub const ROUND_VERIFIED_1: &str = "probe: blk: round 1 verified";
/// The end of every such line, to count them.
pub const ROUND_VERIFIED: &str = " verified\n";

/// Stops a guest running the probe's endless disk rounds (`probe.blk_write=SEED
/// probe.blk_rounds=0`) with `ferry ctl snapshot --keep-paused` into `dir/paused` (virtio-blk
/// quiesces and flushes first), reads the round counter from the snapshot's memory, and checks
/// that every sector `read_disk` returns carries the pattern of the last verified round or of the
/// round in progress: an acknowledged write that was lost leaves an older pattern. Returns the
/// number of verified rounds.
pub fn assert_disk_holds_blk_rounds(
    socket: &Path,
    dir: &Path,
    seed: u64,
    read_disk: impl Fn() -> Vec<u8>,
) -> u64 {
    use ferry_probe::{pattern::first_mismatch, BLK_ROUNDS_MAGIC, BLK_STATUS_GPA};
    let snap = dir.join("paused");
    let out = ctl(
        socket,
        &["snapshot", "--to", snap.to_str().unwrap(), "--keep-paused"],
        Duration::from_secs(120),
    );
    assert_eq!(
        out.code(),
        Some(0),
        "snapshot: {}{}",
        out.stdout,
        out.stderr
    );
    let memory = snap.join("memory");
    assert_eq!(read_u64_at(&memory, BLK_STATUS_GPA + 8), BLK_ROUNDS_MAGIC);
    assert_eq!(read_u64_at(&memory, BLK_STATUS_GPA + 16), seed);
    let verified = read_u64_at(&memory, BLK_STATUS_GPA);
    assert!(verified >= 1, "no disk round verified");
    let last = seed + verified - 1;
    let disk = read_disk();
    for (sector, data) in disk.chunks(512).enumerate() {
        let offset = (sector * 512) as u64;
        let holds = |s: u64| first_mismatch(s, offset, data).is_none();
        assert!(
            holds(last) || holds(last + 1),
            "sector {sector} holds neither round {verified}'s pattern (seed {last}) nor the next \
             round's: acknowledged writes lost ({:02x?})",
            &data[..16.min(data.len())]
        );
    }
    verified
}
