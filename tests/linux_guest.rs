//! A real Linux guest under ferry: the minimal 6.1 kernel and busybox initramfs that
//! `resources/linux/` builds, booted with `--cpus 2`, running one command through `ferry.cmd=`.
//!
//! Linux's early boot runs at CPL0, which a PVM host (`/sys/module/kvm_pvm`) instruction-emulates
//! far too slowly to finish, so the boot test only runs on hardware KVM and prints
//! `skipped: host KVM is PVM` elsewhere. The host-independent parts (the /init command-line
//! parser and the initramfs archive) are tested on every host.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_ferry, TempDir};

/// Building the kernel takes ~6 minutes on 2 cores; leave room for slower CI machines.
const KERNEL_BUILD_DEADLINE: Duration = Duration::from_secs(60 * 60);
const INITRAMFS_BUILD_DEADLINE: Duration = Duration::from_secs(120);
/// A hardware-KVM boot to the command takes about a second; the margin covers loaded hosts.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// The repository root (tests are targets of vmm/Cargo.toml).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

fn linux_dir() -> PathBuf {
    repo_root().join("resources/linux")
}

fn host_kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Runs a builder script from resources/linux with `envs`, and returns the path it prints as its
/// last stdout line. Its progress (stderr) is passed through, so `--nocapture` shows a long build.
fn run_builder(script: &str, envs: &[(&str, &Path)], deadline: Duration) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(linux_dir().join(script))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("spawning bash");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the builder") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "{script} failed ({status}); stdout:\n{out}"
    );
    let path = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "{script} printed {path:?}, which is not a file"
    );
    path
}

/// The serial console's lines without the `\r` the guest tty adds.
fn console_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout.lines().map(|l| l.trim_end_matches('\r'))
}

/// Whether this host can boot Linux in useful time; prints why not when it cannot.
fn hardware_kvm() -> bool {
    if host_kvm_is_pvm() {
        println!("skipped: host KVM is PVM");
        return false;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("skipped: no /dev/kvm");
        return false;
    }
    true
}

/// Boots the Linux guest with `--boot <protocol>` on 2 vCPUs, has it count its CPUs, and checks
/// the count, the init's exit line and ferry's exit status.
fn boot_linux_and_count_cpus(protocol: &str) {
    // Parallel tests both call the builders; build-kernel.sh serialises them on a lock, so the
    // kernel is built once and the second caller gets the cached file.
    let kernel = run_builder("build-kernel.sh", &[], KERNEL_BUILD_DEADLINE);
    let initrd = run_builder("build-initramfs.sh", &[], INITRAMFS_BUILD_DEADLINE);
    // The guest shell expands $(...); ferry passes the text through untouched. The marker cannot
    // be confused with the kernel's own echo of its command line, which starts differently.
    let cmdline = r#"ferry.cmd="echo ferry-test: cpus=$(grep -c ^processor /proc/cpuinfo)""#;
    let out = run_ferry(
        &[
            "run",
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initrd",
            initrd.to_str().expect("utf-8 path"),
            "--cmdline",
            cmdline,
            "--cpus",
            "2",
            "--memory",
            "256M",
            "--boot",
            protocol,
            // The minimal kernel has no ACPI: it finds its CPUs in the MP table and would find
            // devices on the command line.
            "--acpi",
            "off",
        ],
        BOOT_DEADLINE,
    );
    let context = format!(
        "--boot {protocol}\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout, out.stderr
    );
    let cpus: Vec<&str> = console_lines(&out.stdout)
        .filter_map(|l| l.strip_prefix("ferry-test: cpus="))
        .collect();
    assert_eq!(cpus, ["2"], "the guest should see 2 CPUs\n{context}");
    // The init prints this after the command; a kernel panic would also end ferry with status 0
    // (panic=1 reboots), so this line is what proves the command ran and succeeded.
    assert!(
        console_lines(&out.stdout).any(|l| l == "ferry-init: exit=0"),
        "no `ferry-init: exit=0` line\n{context}"
    );
    assert!(
        !out.stdout.contains("Kernel panic"),
        "the guest kernel panicked\n{context}"
    );
    assert_eq!(out.code(), Some(0), "ferry's exit status\n{context}");
}

#[test]
fn linux_guest_boots_through_pvh() {
    if hardware_kvm() {
        boot_linux_and_count_cpus("pvh");
    }
}

#[test]
fn linux_guest_boots_through_the_linux_boot_protocol() {
    if hardware_kvm() {
        boot_linux_and_count_cpus("linux");
    }
}

/// What `sh resources/linux/init --parse CMDLINE` prints, or None when it reports no ferry.cmd.
fn parse_with_init(cmdline: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg(linux_dir().join("init"))
        .args(["--parse", cmdline])
        .stdin(Stdio::null())
        .output()
        .expect("running sh");
    match out.status.code() {
        Some(0) => Some(
            String::from_utf8(out.stdout)
                .expect("utf-8 output")
                .trim_end_matches('\n')
                .to_string(),
        ),
        Some(1) => None,
        other => panic!(
            "init --parse exited with {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn init_finds_ferry_cmd_on_the_kernel_command_line() {
    let defaults = "console=ttyS0 reboot=k panic=1";
    let cases: &[(&str, Option<&str>)] = &[
        (r#"ferry.cmd="uname -a""#, Some("uname -a")),
        (r#"ferry.cmd="uname -a" quiet"#, Some("uname -a")),
        ("ferry.cmd=uptime", Some("uptime")),
        ("ferry.cmd=uptime quiet", Some("uptime")),
        (
            r#"ferry.cmd="echo $(nproc) 'a  b'" x=1"#,
            Some("echo $(nproc) 'a  b'"),
        ),
        // The kernel's parser runs an unterminated quote to the end of the line.
        (r#"ferry.cmd="ls /dev"#, Some("ls /dev")),
        (r#"ferry.cmd="""#, Some("")),
        ("quiet", None),
        // Only a whole parameter named ferry.cmd counts.
        (r#"xferry.cmd="no""#, None),
        (r#"other="ferry.cmd=no""#, None),
    ];
    for (tail, want) in cases {
        let cmdline = format!("{defaults} {tail}");
        assert_eq!(
            parse_with_init(&cmdline).as_deref(),
            *want,
            "cmdline: {cmdline}"
        );
    }
    assert_eq!(parse_with_init("ferry.cmd=first").as_deref(), Some("first"));
}

/// A static busybox the initramfs builder can use without installing anything, if any.
fn static_busybox() -> Option<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let headers = Command::new("readelf").arg("-l").arg(&path).output().ok()?;
    let text = String::from_utf8_lossy(&headers.stdout);
    (headers.status.success() && text.contains("LOAD") && !text.contains("INTERP")).then_some(path)
}

/// One entry of a cpio "newc" archive.
#[derive(Debug)]
struct CpioEntry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Parses a newc archive (the initramfs format), stopping at the trailer.
fn parse_newc(mut bytes: &[u8]) -> Vec<CpioEntry> {
    let field = |header: &[u8], i: usize| {
        let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).expect("ascii header");
        u32::from_str_radix(hex, 16).expect("hex field")
    };
    let align = |n: usize| (n + 3) & !3;
    let mut entries = Vec::new();
    loop {
        assert!(bytes.len() >= 110, "archive ends without a trailer");
        let header = &bytes[..110];
        assert_eq!(&header[..6], b"070701", "bad magic");
        let (size, name_size) = (field(header, 6) as usize, field(header, 11) as usize);
        let name = String::from_utf8(bytes[110..110 + name_size - 1].to_vec()).expect("utf-8 name");
        let data_start = align(110 + name_size);
        let data = bytes[data_start..data_start + size].to_vec();
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(CpioEntry {
            name,
            mode: field(header, 1),
            rdev: (field(header, 9), field(header, 10)),
            data,
        });
        bytes = &bytes[align(data_start + size)..];
    }
}

#[test]
fn initramfs_holds_init_busybox_and_console() {
    let Some(busybox) = static_busybox() else {
        println!("skipped: no static /bin/busybox (apt-get install busybox-static)");
        return;
    };
    let cache = TempDir::new("initramfs");
    let envs = [
        ("FERRY_LINUX_CACHE", cache.path()),
        ("BUSYBOX", busybox.as_path()),
    ];
    let first = run_builder("build-initramfs.sh", &envs, INITRAMFS_BUILD_DEADLINE);
    let bytes = std::fs::read(&first).expect("reading the initramfs");
    // The second call must reuse the cached file, not rebuild it.
    let modified = std::fs::metadata(&first).and_then(|m| m.modified()).ok();
    let second = run_builder("build-initramfs.sh", &envs, INITRAMFS_BUILD_DEADLINE);
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second).and_then(|m| m.modified()).ok(),
        modified
    );
    // A build from scratch elsewhere gives the same bytes: the archive is deterministic.
    let other_cache = TempDir::new("initramfs-again");
    let other_envs = [
        ("FERRY_LINUX_CACHE", other_cache.path()),
        ("BUSYBOX", busybox.as_path()),
    ];
    let other = run_builder("build-initramfs.sh", &other_envs, INITRAMFS_BUILD_DEADLINE);
    assert_ne!(first, other);
    let other_bytes = std::fs::read(&other).expect("reading the initramfs");
    assert!(other_bytes == bytes, "two builds differ: not deterministic");

    let unzipped = Command::new("gzip")
        .args(["-dc"])
        .arg(&first)
        .output()
        .expect("running gzip");
    assert!(unzipped.status.success(), "the initramfs is not gzip data");
    let entries = parse_newc(&unzipped.stdout);
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} missing from the initramfs"))
    };
    let init = find("init");
    assert_eq!(init.mode, 0o100755);
    let init_src = std::fs::read(linux_dir().join("init")).expect("reading init");
    assert_eq!(init.data, init_src);
    let console = find("dev/console");
    assert_eq!((console.mode & 0o170000, console.rdev), (0o020000, (5, 1)));
    assert_eq!(
        find("bin/busybox").data,
        std::fs::read(&busybox).expect("busybox")
    );
    let sh = find("bin/sh");
    assert_eq!((sh.mode, sh.data.as_slice()), (0o120777, &b"busybox"[..]));
    for dir in ["proc", "sys", "dev", "tmp"] {
        assert_eq!(find(dir).mode & 0o170000, 0o040000, "{dir} is a directory");
    }
}
