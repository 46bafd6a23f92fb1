//! Test support for the iSCSI integration tests: a tgtd instance per test on its own ports, a
//! file-backed LUN, and synchronous helpers around the asynchronous `DiskBackend`.
//!
//! tgtd is required: if it is not installed the tests fail with a message saying how to get it.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_devices::storage::{Completion, DiskBackend, DiskError, DiskOp, DiskRequest, GuestBuf};

pub const IQN: &str = "iqn.2026-11.test:disk0";

/// How a test wants the target configured.
#[derive(Clone, Default)]
pub struct Setup {
    /// One-way CHAP account (user, password) bound to the target.
    pub chap: Option<(String, String)>,
    /// Mutual CHAP (outgoing) account.
    pub mutual: Option<(String, String)>,
    /// Let the target accept CRC32C header and data digests (tgtd's default is None only).
    pub digests: bool,
    /// Make the target ping the initiator with NOP-In every second.
    pub nop_in: bool,
    /// Thin-provisioned LUN (UNMAP supported, LBP VPD page says so).
    pub thin: bool,
    /// Target parameters set with `tgtadm --op update -n KEY -v VALUE`.
    pub params: Vec<(&'static str, &'static str)>,
}

/// A running tgtd with one target and LUN 1 backed by a file. Killed and cleaned up on drop.
pub struct Tgtd {
    child: Option<Child>,
    pub port: u16,
    cport: u16,
    pub dir: PathBuf,
    pub lun_file: PathBuf,
    setup: Setup,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn tgtd_binary() -> &'static str {
    for p in ["/usr/sbin/tgtd", "/sbin/tgtd"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!(
        "tgtd is not installed: these iSCSI integration tests need the Debian package `tgt` \
         (run `apt-get install -y tgt` as root; .ci/run installs it)"
    );
}

impl Tgtd {
    /// Starts tgtd with a LUN file of `size` bytes filled by `fill(offset)`.
    pub fn start(size: u64, setup: Setup) -> Tgtd {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-iscsi-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        let lun_file = dir.join("lun.img");
        let f = fs::File::create(&lun_file).expect("lun file");
        f.set_len(size).expect("lun size");
        let port = free_port();
        // tgtd's control port only names a unix socket and must be below 32768.
        let cport = 1024 + port % 31_000;
        let mut t = Tgtd {
            child: None,
            port,
            cport,
            dir,
            lun_file,
            setup,
        };
        t.spawn();
        t
    }

    /// Starts the daemon on this instance's ports and configures the target again.
    pub fn spawn(&mut self) {
        // Every start takes a fresh control port: the control socket's lock is named after it,
        // and one still held (a daemon just killed, another test's) must not stop this start.
        for attempt in 0.. {
            self.cport = 1024 + free_port() % 31_000;
            self.start_daemon();
            // Configure through the control socket, retrying until the daemon is up.
            match self.admin_retry(&["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN]) {
                Ok(()) => break,
                Err(log) if log.contains("another tgtd is using") && attempt < 5 => continue,
                Err(log) => panic!("tgtd exited; log: {log}"),
            }
        }
        let file = self.lun_file.display().to_string();
        self.admin(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &file,
        ]);
        if self.setup.thin {
            self.admin(&[
                "--op",
                "update",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "--params",
                "thin_provisioning=1",
            ]);
        }
        self.admin(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]);
        if let Some((u, p)) = self.setup.chap.clone() {
            self.admin(&[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                &u,
                "--password",
                &p,
            ]);
            self.admin(&[
                "--op", "bind", "--mode", "account", "--tid", "1", "--user", &u,
            ]);
        }
        if let Some((u, p)) = self.setup.mutual.clone() {
            self.admin(&[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                &u,
                "--password",
                &p,
            ]);
            self.admin(&[
                "--op",
                "bind",
                "--mode",
                "account",
                "--tid",
                "1",
                "--user",
                &u,
                "--outgoing",
            ]);
        }
        if self.setup.digests {
            self.admin(&[
                "--op",
                "update",
                "--mode",
                "target",
                "--tid",
                "1",
                "-n",
                "HeaderDigest",
                "-v",
                "CRC32C",
            ]);
            self.admin(&[
                "--op",
                "update",
                "--mode",
                "target",
                "--tid",
                "1",
                "-n",
                "DataDigest",
                "-v",
                "CRC32C",
            ]);
        }
        for (k, v) in self.setup.params.clone() {
            self.admin(&[
                "--op", "update", "--mode", "target", "--tid", "1", "-n", k, "-v", v,
            ]);
        }
        if self.setup.nop_in {
            self.admin(&[
                "--op",
                "update",
                "--mode",
                "target",
                "--tid",
                "1",
                "-n",
                "nop_interval",
                "-v",
                "1",
            ]);
            self.admin(&[
                "--op",
                "update",
                "--mode",
                "target",
                "--tid",
                "1",
                "-n",
                "nop_count",
                "-v",
                "2",
            ]);
        }
        self.wait_portal();
    }

    fn start_daemon(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tgtd.log"))
            .expect("log");
        let child = Command::new(tgtd_binary())
            .args([
                "-f",
                "--iscsi",
                &format!("portal=127.0.0.1:{}", self.port),
                &format!("--control-port={}", self.cport),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot start tgtd");
        self.child = Some(child);
    }

    fn tgtadm(&self, args: &[&str]) -> std::process::Output {
        Command::new("tgtadm")
            .arg(format!("--control-port={}", self.cport))
            .args(["--lld", "iscsi"])
            .args(args)
            .output()
            .expect("cannot run tgtadm")
    }

    pub fn admin(&self, args: &[&str]) {
        let out = self.tgtadm(args);
        assert!(
            out.status.success(),
            "tgtadm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs tgtadm until the daemon answers; `Err(log)` when the daemon exited instead.
    fn admin_retry(&mut self, args: &[&str]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.tgtadm(args);
            if out.status.success() {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("({st}) {}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "tgtd never accepted tgtadm: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the portal accepts TCP connections.
    fn wait_portal(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tgtd portal never came up; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("tgtd.log")).unwrap_or_default()
    }

    /// SIGKILLs the daemon (connections drop at once, nothing is flushed politely).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, lun: u16) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    pub fn read_file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = fs::File::open(&self.lun_file).expect("open lun file");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        let mut v = vec![0u8; len];
        f.read_exact(&mut v).expect("read lun file");
        v
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
        // tgtd leaves its control socket and lock file behind when killed.
        for suffix in ["", ".lock"] {
            let _ = fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.cport));
        }
    }
}

/// Deterministic test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

/// Waits for the backend's notifier and collects completions until `n` arrived.
pub fn wait_for(disk: &mut dyn DiskBackend, n: usize, timeout: Duration) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let fd = disk.notifier().expect("iSCSI backend has a notifier");
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} completions",
            out.len()
        );
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        disk.poll_completions(&mut out);
    }
    out
}

/// One request, synchronously.
pub fn io(
    disk: &mut dyn DiskBackend,
    op: DiskOp,
    offset: u64,
    buf: &mut [u8],
) -> Result<u32, DiskError> {
    let bufs = [GuestBuf {
        ptr: buf.as_mut_ptr(),
        len: buf.len() as u32,
    }];
    let nbufs = if matches!(op, DiskOp::Read | DiskOp::Write) {
        1
    } else {
        0
    };
    let req = DiskRequest {
        tag: 7,
        op,
        offset,
        len: buf.len() as u64,
        bufs: &bufs[..nbufs],
    };
    disk.submit(&req).expect("submit");
    disk.kick().expect("kick");
    let c = wait_for(disk, 1, Duration::from_secs(60));
    assert_eq!(c[0].tag, 7);
    c[0].result
}

pub fn write(disk: &mut dyn DiskBackend, offset: u64, data: &[u8]) -> Result<u32, DiskError> {
    let mut d = data.to_vec();
    io(disk, DiskOp::Write, offset, &mut d)
}

pub fn read(disk: &mut dyn DiskBackend, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
    let mut d = vec![0u8; len];
    io(disk, DiskOp::Read, offset, &mut d).map(|_| d)
}
