//! Cgroup limits the jailer writes, and their effects on a jailed VMM.

use std::os::unix::process::ExitStatusExt;

use super::*;

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
    let mut child = jail.spawn(
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
    let _ = child.kill();
    let _ = child.wait();
}
