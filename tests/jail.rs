//! The jailer (`ferry jail`, and ferry started as `jailer`): real jails on this host, as root.
//! Each test builds its jail under its own temporary base directory and its own cgroups, and a
//! [`Jail`] guard removes both (killing what is left in the cgroups) even when the test fails.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ferry_bin, probe_bin, wait_for_socket, wait_with_deadline, TempDir};

const DEADLINE: Duration = Duration::from_secs(120);
const UID: u32 = 1000;
const GID: u32 = 1000;

/// One test's jail: its base directory, and the cgroup directories it may create, removed on
/// drop (processes still in them are killed first; parents only if the test created them).
struct Jail {
    id: String,
    /// The exec file's name: the jail is `<base>/<exec name>/<id>/root`.
    exec_name: String,
    base: TempDir,
    /// `(hierarchy root, relative group path)` of each cgroup the jailer is asked to create.
    cgroups: Vec<(PathBuf, PathBuf)>,
    /// Relative parents that did not exist before the test, per hierarchy root.
    created: Vec<PathBuf>,
    /// cgroup.subtree_control files this test enabled a controller in: (file, controller).
    enabled: Vec<(PathBuf, String)>,
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Jail {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            id: format!("{tag}-{}-{n}", std::process::id()),
            exec_name: "ferry".into(),
            base: TempDir::new(&format!("jail-{tag}")),
            cgroups: Vec::new(),
            created: Vec::new(),
            enabled: Vec::new(),
        }
    }

    fn base(&self) -> &Path {
        self.base.path()
    }

    /// The jail's root as seen from the host.
    fn root(&self) -> PathBuf {
        self.base()
            .join(&self.exec_name)
            .join(&self.id)
            .join("root")
    }

    /// Registers the microVM's group `<root>/<parent>/<id>` for cleanup, noting which of its
    /// ancestors below `root` the test is about to create.
    fn cgroup(&mut self, root: &Path, parent: &str) -> PathBuf {
        let mut path = root.to_path_buf();
        for part in Path::new(parent).components() {
            path.push(part);
            if !path.exists() && !self.created.contains(&path) {
                self.created.push(path.clone());
            }
        }
        let group = Path::new(parent).join(&self.id);
        self.cgroups.push((root.to_path_buf(), group.clone()));
        root.join(group)
    }

    /// Creates the jail root before the jailer runs and puts the probe guest in it, as an
    /// orchestrator places kernels and disks.
    fn with_probe(&self) {
        fs::create_dir_all(self.root()).unwrap();
        fs::copy(probe_bin(), self.root().join("probe")).unwrap();
    }

    /// `ferry jail --id ID --uid 1000 --gid 1000 --chroot-base-dir BASE <flags> -- <vmm>`.
    fn command(&self, flags: &[&str], vmm: &[&str]) -> Command {
        let mut cmd = Command::new(ferry_bin());
        cmd.args(["jail", "--id", &self.id, "--uid", "1000", "--gid", "1000"])
            .arg("--chroot-base-dir")
            .arg(self.base())
            .args(flags)
            .arg("--")
            .args(vmm)
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&self, flags: &[&str], vmm: &[&str]) -> Child {
        self.command(flags, vmm)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ferry jail")
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        for (root, group) in &self.cgroups {
            let dir = root.join(group);
            for _ in 0..500 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: signalling a process of this test's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = fs::remove_dir(&dir);
        }
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        for (file, controller) in &self.enabled {
            let _ = fs::write(file, format!("-{controller}"));
        }
    }
}

/// The hierarchy root of a v1 controller, or the v2 root, from /proc/mounts.
fn mount_of(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let ok =
            f.len() > 3 && f[2] == fstype && option.is_none_or(|o| f[3].split(',').any(|x| x == o));
        ok.then(|| PathBuf::from(f[1]))
    })
}

/// This process's cgroup path in the v1 hierarchy of `controller` (from /proc/self/cgroup).
fn own_v1_cgroup(controller: &str) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| path.trim_matches('/').to_string())
        })
        .unwrap_or_default()
}

/// `Key:\tvalue` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn read_pid_file(path: &Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < DEADLINE, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP request with a JSON body over the jailed VMM's API socket; asserts a 2xx.
fn api(socket: &Path, method: &str, path: &str, body: &str) {
    let (status, text) = common::http(socket, method, path, Some(body));
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
}

/// The exit status of a `ferry jail` that fails before anything runs, and its stderr.
fn refused(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_are_refused_before_anything_is_built() {
    let jail = Jail::new("args");
    let ferry = ferry_bin();
    let base = jail.base().to_str().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--id", "a/b", "--uid", "1", "--gid", "1"], "--id"),
        (&["--id", "a", "--uid", "1"], "--gid is required"),
        (
            &[
                "--id",
                "a",
                "--uid",
                "1",
                "--gid",
                "1",
                "--cgroup",
                "release_agent=/x",
            ],
            "not a cgroup v1 file",
        ),
        (
            &[
                "--id",
                "a",
                "--uid",
                "1",
                "--gid",
                "1",
                "--resource-limit",
                "no-file=x",
            ],
            "whole number",
        ),
        (
            &[
                "--id",
                "a",
                "--uid",
                "1",
                "--gid",
                "1",
                "--exec-file",
                "ferry",
            ],
            "absolute",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = refused(
            Command::new(&ferry)
                .arg("jail")
                .args(*args)
                .args(["--chroot-base-dir", &base]),
        );
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
    // Started as `jailer`: Firecracker's jailer exits 1 and requires --exec-file.
    let link = jail.base().join("jailer");
    std::os::unix::fs::symlink(&ferry, &link).unwrap();
    let (code, err) = refused(Command::new(&link).args([
        "--id",
        "a",
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        &base,
    ]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--exec-file is required"), "{err}");
    let version = Command::new(&link).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("Jailer v"));
    // Nothing was built for any of them.
    assert!(!jail.base().join("ferry").exists());
}

#[test]
fn jailed_vmm_sees_only_its_jail_and_runs_unprivileged_then_boots_the_probe() {
    let mut jail = Jail::new("iso");
    let netns = format!("ferry-jail-{}", jail.id);
    let added = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(added.success());
    struct NetnsGuard(String);
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _netns = NetnsGuard(netns.clone());
    let netns_path = format!("/var/run/netns/{netns}");
    let pids_root = mount_of("cgroup", Some("pids")).expect("a v1 pids hierarchy");
    let parent = format!("ferry-jail-test-{}", jail.id);
    let group = jail.cgroup(&pids_root, &parent);
    jail.with_probe();
    // A descriptor the jailer must not pass on, and an environment it must drop.
    let marker = jail.base().join("inherited-marker");
    fs::write(&marker, b"x").unwrap();
    let marker_file = fs::File::open(&marker).unwrap();
    let marker_fd = std::os::fd::AsRawFd::as_raw_fd(&marker_file);
    let mut cmd = jail.command(
        &[
            "--netns",
            &netns_path,
            "--cgroup",
            "pids.max=200",
            "--parent-cgroup",
            &parent,
            "--resource-limit",
            "fsize=1048576,no-file=512",
            "--dev",
            "/dev/zero",
        ],
        &["firecracker", "--api-sock", "/run/api.sock"],
    );
    cmd.env("FERRY_JAIL_SECRET", "leak");
    // SAFETY: dup2 in the child before exec, onto fd 9 without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(marker_fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let socket = jail.root().join("run/api.sock");
    wait_for_socket(&socket, DEADLINE);

    // The PID file names the VMM (the jailer executed it in place).
    assert_eq!(read_pid_file(&jail.root().join("ferry.pid")), pid);
    // Unprivileged: the given ids, no groups, no capability in any set, no_new_privs.
    assert_eq!(status_field(pid, "Uid"), "1000 1000 1000 1000");
    assert_eq!(status_field(pid, "Gid"), "1000 1000 1000 1000");
    assert_eq!(status_field(pid, "Groups"), "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Its root is the jail: its own mount namespace with one mount, no host file reachable.
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut listing: Vec<String> = fs::read_dir(&proc_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    for want in ["dev", "ferry", "ferry.pid", "probe", "run"] {
        assert!(
            listing.iter().any(|n| n == want),
            "{want} not in {listing:?}"
        );
    }
    for host_only in ["etc", "home", "proc", "sys", "usr", "tmp", "srv", "root"] {
        assert!(
            !listing.iter().any(|n| n == host_only),
            "{host_only} in {listing:?}"
        );
    }
    assert!(Path::new("/etc/hostname").exists());
    assert!(!proc_root.join("etc/hostname").exists());
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert_eq!(points, ["/"], "mounts left in the jail:\n{mountinfo}");
    // Device nodes: KVM, tun, and the --dev node, same numbers as the host's, the VMM's own.
    for (node, major, minor) in [
        ("dev/kvm", 10, 232),
        ("dev/net/tun", 10, 200),
        ("dev/zero", 1, 5),
    ] {
        let meta = fs::metadata(proc_root.join(node)).unwrap();
        assert!(meta.file_type().is_char_device(), "{node}");
        assert_eq!(
            (libc::major(meta.rdev()), libc::minor(meta.rdev())),
            (major, minor),
            "{node}"
        );
        assert_eq!((meta.uid(), meta.gid()), (UID, GID), "{node}");
    }
    // Network namespace, environment, descriptors, limits.
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        PathBuf::from(format!(
            "net:[{}]",
            fs::metadata(&netns_path).unwrap().ino()
        ))
    );
    assert!(fs::read(format!("/proc/{pid}/environ")).unwrap().is_empty());
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains("inherited-marker"),
            "{target:?}"
        );
    }
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap()
    };
    assert_eq!(limit("Max open files"), "512 512");
    assert_eq!(limit("Max file size"), "1048576 1048576");
    // The cgroup: limit written, process inside.
    assert_eq!(
        fs::read_to_string(group.join("pids.max")).unwrap().trim(),
        "200"
    );
    let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert!(
        procs.split_whitespace().any(|p| p == pid.to_string()),
        "{procs}"
    );
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.contains(&format!(":pids:/{parent}/{}\n", jail.id)),
        "{own}"
    );

    // And it still does its job: the probe boots from the jail's /probe over the API.
    api(
        &socket,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/probe", "boot_args": "probe.test=boot"}"#,
    );
    api(
        &socket,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    api(
        &socket,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    let out = wait_with_deadline(child, DEADLINE);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    out.assert_pass("boot");
    assert!(
        out.stdout.contains("probe: done pass=1 fail=0"),
        "{}",
        out.stdout
    );
}

#[test]
fn jailed_run_form_exits_with_the_guest_status() {
    let jail = Jail::new("run");
    jail.with_probe();
    let child = jail.spawn(
        &[],
        &[
            "run",
            "--kernel",
            "/probe",
            "--cmdline",
            "probe.test=boot,nosuchtest",
            "--exit-device",
        ],
    );
    let out = wait_with_deadline(child, DEADLINE);
    // The probe's own status (1: one test failed), passed through the jailer's exec.
    assert_eq!(out.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    out.assert_pass("boot");
    assert!(
        out.stdout.contains("probe: done pass=1 fail=1"),
        "{}",
        out.stdout
    );
}

/// Cgroup limits and their effects (tests/jail/cgroups.rs).
#[path = "jail/cgroups.rs"]
mod cgroups;
/// Daemonized and PID-namespace runs, the `jailer` form, a jailed migration destination
/// (tests/jail/forms.rs).
#[path = "jail/forms.rs"]
mod forms;
