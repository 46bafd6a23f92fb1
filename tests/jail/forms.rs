//! The jailer's other forms: daemonized in a PID namespace, Firecracker's `jailer` command line,
//! and a jailed migration destination.

use super::*;

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
