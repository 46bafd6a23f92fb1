//! The jailer (`ferry jail`, and ferry started as `jailer`): real jails on this host, as root.
//! Each test builds its jail under its own temporary base directory and its own cgroups, and a
//! [`Jail`] guard removes both (killing what is left in the cgroups) even when the test fails.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
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

/// Starts the busy probe (its dirty loop, never ending) in a jail with `flags`.
fn start_dirty(jail: &Jail, flags: &[&str], mib: &str, memory: &str) -> Child {
    jail.with_probe();
    let cmdline = format!("probe.test=dirty probe.dirty_mib={mib}");
    jail.spawn(
        flags,
        &[
            "run",
            "--kernel",
            "/probe",
            "--cmdline",
            &cmdline,
            "--memory",
            memory,
            "--exit-device",
        ],
    )
}

/// Waits until `pid` is in the cgroup `group` (the jailer joins it before executing the VMM).
fn wait_in_cgroup(group: &Path, pid: u32) {
    let start = Instant::now();
    loop {
        let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        if procs.split_whitespace().any(|p| p == pid.to_string()) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{pid} never joined {}",
            group.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `key value` from a cgroup's flat-keyed file (cpu.stat, memory.oom_control).
fn keyed(path: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}:\n{text}", path.display()))
}

#[test]
fn cpu_quota_throttles_the_jailed_vmm() {
    let mut jail = Jail::new("cpu");
    let cpu_root = mount_of("cgroup", Some("cpu")).expect("a v1 cpu hierarchy");
    let parent = format!("ferry-jail-test-{}", jail.id);
    let group = jail.cgroup(&cpu_root, &parent);
    let mut child = start_dirty(
        &jail,
        &[
            "--cgroup",
            "cpu.cfs_period_us=100000",
            "--cgroup",
            "cpu.cfs_quota_us=10000",
            "--parent-cgroup",
            &parent,
        ],
        "16",
        "128M",
    );
    wait_in_cgroup(&group, child.id());
    let quota = fs::read_to_string(group.join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "10000");
    // The probe's dirty loop never yields: under a 10% quota the group is throttled; nr_throttled
    // only grows when the kernel actually stopped the group for having used its quota.
    let start = Instant::now();
    while keyed(&group.join("cpu.stat"), "nr_throttled") == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the jailed VMM exited early"
        );
        assert!(start.elapsed() < DEADLINE, "never throttled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn memory_limit_below_the_guest_ram_gets_the_vmm_oom_killed() {
    let mut jail = Jail::new("mem");
    let mem_root = mount_of("cgroup", Some("memory")).expect("a v1 memory hierarchy");
    // Nested under this test's own memory cgroup, so the host's limits still apply above it.
    let own = own_v1_cgroup("memory");
    let parent = if own.is_empty() {
        format!("ferry-jail-test-{}", jail.id)
    } else {
        format!("{own}/ferry-jail-test-{}", jail.id)
    };
    let group = jail.cgroup(&mem_root, &parent);
    // 64 MiB for a VMM whose guest writes 128 MiB of its 256 MiB without end.
    let child = start_dirty(
        &jail,
        &[
            "--cgroup",
            "memory.limit_in_bytes=64M",
            "--parent-cgroup",
            &parent,
        ],
        "128",
        "256M",
    );
    let out = wait_with_deadline(child, DEADLINE);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (64u64 << 20).to_string()
    );
    assert!(keyed(&group.join("memory.oom_control"), "oom_kill") >= 1);
    assert!(
        out.stdout.contains("probe: dirty: running"),
        "{}",
        out.stdout
    );
}

#[test]
fn cgroup_v2_places_the_vmm_and_names_unavailable_controllers() {
    let mut jail = Jail::new("v2");
    let root = mount_of("cgroup2", None).expect("a cgroup2 mount");
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    let parent = format!("ferry-jail-test-{}", jail.id);
    // A controller that is bound to a v1 hierarchy on this host is refused with its reason.
    if !available.split_whitespace().any(|c| c == "memory") {
        let (code, err) = refused(
            jail.command(
                &[
                    "--cgroup-version",
                    "2",
                    "--cgroup",
                    "memory.max=64M",
                    "--parent-cgroup",
                    &parent,
                ],
                &["run", "--kernel", "/probe"],
            )
            .stdout(Stdio::null()),
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("memory controller is not available"), "{err}");
    }
    // What v2 offers here: the first available controller with a file the jailer knows.
    let (file, value) = if available.split_whitespace().any(|c| c == "pids") {
        ("pids.max".to_string(), "100".to_string())
    } else if available.split_whitespace().any(|c| c == "hugetlb") {
        ("hugetlb.2MB.max".to_string(), "0".to_string())
    } else {
        panic!("no usable cgroup v2 controller on this host: {available:?}");
    };
    let controller = file.split('.').next().unwrap().to_string();
    let control = root.join("cgroup.subtree_control");
    if !fs::read_to_string(&control)
        .unwrap()
        .split_whitespace()
        .any(|c| c == controller)
    {
        jail.enabled.push((control, controller.clone()));
    }
    let group = jail.cgroup(&root, &parent);
    jail.enabled.push((
        root.join(&parent).join("cgroup.subtree_control"),
        controller,
    ));
    jail.with_probe();
    let setting = format!("{file}={value}");
    let child = jail.spawn(
        &[
            "--cgroup-version",
            "2",
            "--cgroup",
            &setting,
            "--parent-cgroup",
            &parent,
        ],
        &["firecracker", "--api-sock", "/run/api.sock"],
    );
    let pid = child.id();
    wait_for_socket(&jail.root().join("run/api.sock"), DEADLINE);
    let written = fs::read_to_string(group.join(&file)).unwrap();
    assert_eq!(written.trim(), value);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.contains(&format!("0::/{parent}/{}\n", jail.id)),
        "{own}"
    );
    drop(child);
    // SAFETY: ending the VMM this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn daemonized_vmm_in_a_new_pid_namespace_is_its_init() {
    let jail = Jail::new("pidns");
    // The jailer exits at once; its orphaned VMM comes back to this process to be reaped.
    // SAFETY: a process attribute with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let out = jail
        .command(
            &["--daemonize", "--new-pid-ns"],
            &["firecracker", "--api-sock", "/run/api.sock"],
        )
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = read_pid_file(&jail.root().join("ferry.pid"));
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: ending and reaping the VMM this test started (reparented to us).
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
                libc::waitpid(self.0 as i32, std::ptr::null_mut(), 0);
            }
        }
    }
    let _reap = Reap(pid);
    wait_for_socket(&jail.root().join("run/api.sock"), DEADLINE);
    // PID 1 in its own namespace, a different PID outside.
    assert_eq!(status_field(pid, "NSpid"), format!("{pid} 1"));
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        fs::read_link("/proc/self/ns/pid").unwrap()
    );
    // Daemonized: standard I/O on /dev/null, its own session, not its leader.
    for fd in 0..3 {
        assert_eq!(
            fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            PathBuf::from("/dev/null")
        );
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let session: i32 = after_comm
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(session, std::process::id() as i32);
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
}

#[test]
fn jailed_destination_receives_a_migration_over_a_socket_in_its_jail() {
    let dir = TempDir::new("jail-mig");
    let jail = Jail::new("mig");
    fs::create_dir_all(jail.root().join("run")).unwrap();
    let source_socket = dir.path().join("source.sock");
    let probe = probe_bin();
    let mut source = common::FerryProcess::spawn(
        dir.path(),
        "source",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=boot,keyboard",
            "--exit-device",
            "--api-socket",
            source_socket.to_str().unwrap(),
        ],
    );
    source.wait_for_output("probe: keyboard: ready", DEADLINE);
    // A name of its own: /proc/net/unix shows the path as the jailed VMM bound it.
    let inside = format!("/run/{}.sock", jail.id);
    let dest = jail.spawn(
        &[],
        &[
            "receive",
            "--listen",
            &format!("unix:{inside}"),
            "--api-socket",
            "/run/api.sock",
        ],
    );
    // A connection would be taken as the migration: wait for the listening socket instead
    // (flag 00010000, __SO_ACCEPTCON).
    let start = Instant::now();
    while !fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.ends_with(&format!(" {inside}")) && l.split_whitespace().nth(3) == Some("00010000")
        })
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the jailed destination never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let listen = jail.root().join(inside.trim_start_matches('/'));
    let to = format!("unix:{}", listen.display());
    let out = common::ctl(&source_socket, &["migrate", "--to", &to], DEADLINE);
    assert_eq!(out.code(), Some(0), "migrate: {}{}", out.stdout, out.stderr);
    assert_eq!(
        source.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        source.stderr()
    );
    // The guest now runs in the jail: press Ctrl-Alt-Del through the jailed VMM's API and the
    // probe, which was waiting for it on the source, passes and exits through the jailed VMM.
    let dest_socket = jail.root().join("run/api.sock");
    wait_for_socket(&dest_socket, DEADLINE);
    api(
        &dest_socket,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    let out = wait_with_deadline(dest, DEADLINE);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    out.assert_pass("keyboard");
}

#[test]
fn jailer_form_runs_a_firecracker_named_binary_with_firecrackers_arguments() {
    // What an orchestrator does: `jailer --exec-file …/firecracker … -- <firecracker flags>`,
    // with ferry behind both names.
    let mut jail = Jail::new("fc");
    jail.exec_name = "firecracker".into();
    let bin = jail.base().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(ferry_bin(), bin.join("jailer")).unwrap();
    std::os::unix::fs::symlink(ferry_bin(), bin.join("firecracker")).unwrap();
    jail.with_probe();
    let config = r#"{"boot-source": {"kernel_image_path": "/probe", "boot_args": "probe.test=boot"},
                     "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#;
    fs::write(jail.root().join("vm.json"), config).unwrap();
    let child = Command::new(bin.join("jailer"))
        .args([
            "--id",
            &jail.id,
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--exec-file",
        ])
        .arg(bin.join("firecracker"))
        .arg("--chroot-base-dir")
        .arg(jail.base())
        .args(["--", "--no-api", "--config-file", "/vm.json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(child, DEADLINE);
    // ferry took `--id` and the jailer's start-time flags as Firecracker does, then booted.
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    out.assert_pass("boot");
    assert!(jail.root().join("firecracker").is_file());
    assert!(jail.root().join("firecracker.pid").is_file());
}
