//! Booting the probe guest with the real `ferry` binary: memory and CPU reporting, SMP bring-up,
//! both boot protocols, exit statuses, and user errors.

mod common;

use std::time::Duration;

use common::{run_ferry, run_probe, TempDir};

/// Generous: ring-0 guest code is instruction-emulated on PVM hosts.
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn boot_reports_memory_and_cpus() {
    let out = run_probe("probe.test=boot", &["--memory", "512M"], DEADLINE);
    out.assert_pass("boot");
    let mem: u64 = out.probe_value("boot", "mem_mib").unwrap().parse().unwrap();
    // 512 MiB minus the legacy hole below 1 MiB (EBDA, VGA, BIOS areas).
    assert!((510..=511).contains(&mem), "mem_mib={mem}");
    assert_eq!(out.probe_value("boot", "cpus").as_deref(), Some("1"));
    assert_eq!(out.probe_value("boot", "cmdline_ok").as_deref(), Some("1"));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.contains("probe: done pass=1 fail=0"));
}

#[test]
fn large_memory_spans_the_mmio_hole() {
    let out = run_probe("probe.test=boot", &["--memory", "4G"], DEADLINE);
    out.assert_pass("boot");
    let mem: u64 = out.probe_value("boot", "mem_mib").unwrap().parse().unwrap();
    assert!((4094..=4095).contains(&mem), "mem_mib={mem}");
}

#[test]
fn smp_brings_up_every_cpu() {
    let out = run_probe(
        "probe.test=boot,serial,smp",
        &["--cpus", "2", "--memory", "512M"],
        DEADLINE,
    );
    out.assert_pass("boot");
    out.assert_pass("serial");
    out.assert_pass("smp");
    assert_eq!(out.probe_value("boot", "cpus").as_deref(), Some("2"));
    assert_eq!(out.probe_value("smp", "cpus").as_deref(), Some("2"));
    assert_eq!(out.code(), Some(0));
}

#[test]
fn linux_boot_protocol_works_too() {
    let out = run_probe(
        "probe.test=boot",
        &["--boot", "linux", "--memory", "256M"],
        DEADLINE,
    );
    out.assert_pass("boot");
    let mem: u64 = out.probe_value("boot", "mem_mib").unwrap().parse().unwrap();
    assert!((254..=255).contains(&mem), "mem_mib={mem}");
    assert_eq!(out.code(), Some(0));
}

#[test]
fn serial_text_arrives_intact() {
    let out = run_probe("probe.test=serial", &[], DEADLINE);
    out.assert_pass("serial");
    assert_eq!(out.probe_value("serial", "bytes").as_deref(), Some("4096"));
}

#[test]
fn serial_to_file_and_none() {
    let dir = TempDir::new("serial");
    let log = dir.path().join("console.log");
    let arg = format!("file={}", log.display());
    let out = run_probe("probe.test=boot", &["--serial", &arg], DEADLINE);
    assert_eq!(out.code(), Some(0));
    assert!(!out.stdout.contains("probe:"), "output went to stdout");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("probe: boot: PASS"), "{text}");

    let out = run_probe("probe.test=boot", &["--serial", "none"], DEADLINE);
    assert_eq!(out.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn exit_status_follows_the_exit_device() {
    // An unknown test fails, so the probe writes 1 to the exit device.
    let out = run_probe("probe.test=boot,no_such_test", &[], DEADLINE);
    assert!(out
        .probe_line("no_such_test")
        .is_some_and(|l| l.contains("FAIL")));
    assert!(out.stdout.contains("probe: done pass=1 fail=1"));
    assert_eq!(out.code(), Some(1));
}

#[test]
fn without_exit_device_the_probe_resets_and_ferry_exits_zero() {
    let probe = common::probe_bin();
    let out = run_ferry(
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=no_such_test",
        ],
        DEADLINE,
    );
    assert!(out.stdout.contains("fail=1"));
    assert_eq!(out.code(), Some(0), "reset through the i8042 ends with 0");
}

/// A guest that halts every vCPU with interrupts off (Linux's `poweroff` without a power-off
/// method) can never run again: ferry ends with status 0 instead of staying up as an orphan.
#[test]
fn a_guest_that_halts_every_vcpu_for_good_ends_ferry_with_zero() {
    for (cpus, tests) in [("1", "probe.test=halt"), ("2", "probe.test=smp,halt")] {
        let out = run_probe(tests, &["--cpus", cpus, "--log-level", "info"], DEADLINE);
        out.assert_pass("halt");
        assert!(
            !out.stdout.contains("probe: done"),
            "the probe must stop in its halt, not exit: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("every vCPU halted with interrupts off"),
            "{cpus} vCPUs: {}",
            out.stderr
        );
        assert_eq!(out.code(), Some(0), "{cpus} vCPUs: {}", out.stderr);
    }
}

/// The watch must not end a guest whose vCPUs still run: the dirty loop runs in ring 3 for good,
/// and ferry stays up until it is killed (checked after several watch periods).
#[test]
fn a_running_guest_is_never_taken_for_halted() {
    let dir = TempDir::new("halt-live");
    let probe = common::probe_bin();
    let socket = dir.path().join("api.sock");
    let mut vm = common::FerryProcess::spawn(
        dir.path(),
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=smp,dirty probe.dirty_mib=1 probe.dirty_rate_mib=1",
            "--cpus",
            "2",
            "--exit-device",
            "--api-socket",
            socket.to_str().unwrap(),
            "--log-level",
            "info",
        ],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    // Pause and resume through the API too: a paused VM answers the watch as live.
    common::wait_for_socket(&socket, DEADLINE);
    for action in ["pause", "resume"] {
        let out = common::ctl(&socket, &[action], DEADLINE);
        assert_eq!(
            out.code(),
            Some(0),
            "{action}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    // Progress of the guest's own work, not of the clock: the watch asked the vCPUs several
    // times by the time the kick counter grew this much (one kick per vCPU per check).
    let start = std::time::Instant::now();
    loop {
        let metrics = common::ctl(&socket, &["metrics"], DEADLINE);
        let kicks: f64 = metrics
            .stdout
            .lines()
            .find(|l| l.starts_with("ferry_vcpu_exits_total{reason=\"kick\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0);
        if kicks >= 12.0 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "kicks stuck at {kicks}:\n{}",
            metrics.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(vm.is_running(), "ferry ended a live guest: {}", vm.stderr());
    assert!(
        !vm.stderr().contains("every vCPU halted"),
        "{}",
        vm.stderr()
    );
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let out = run_ferry(&["run", "--kernel", "/nonexistent/vmlinux"], DEADLINE);
    assert_eq!(out.code(), Some(1));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("error: cannot open kernel /nonexistent/vmlinux"));
}

#[test]
fn garbage_kernel_is_rejected_without_panic() {
    let dir = TempDir::new("garbage");
    let path = dir.path().join("garbage.bin");
    let junk: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, junk).unwrap();
    let out = run_ferry(&["run", "--kernel", path.to_str().unwrap()], DEADLINE);
    assert_eq!(out.code(), Some(1));
    let error = out.error_line();
    assert!(error.starts_with("error: kernel "), "{}", out.stderr);
    assert!(error.contains("not a bootable kernel"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}

#[test]
fn bad_flag_values_fail_cleanly() {
    let out = run_ferry(&["run", "--kernel", "k", "--memory", "12X"], DEADLINE);
    assert_eq!(out.code(), Some(2), "clap usage error");
    assert!(out.stderr.contains("is not a size"));
    let probe = common::probe_bin();
    let out = run_ferry(
        &["run", "--kernel", probe.to_str().unwrap(), "--memory", "8M"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(1));
    assert!(out
        .error_line()
        .starts_with("error: invalid configuration: guest memory must be"));
    let out = run_ferry(
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--memory",
            "100000G",
        ],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(1));
    assert!(out.error_line().contains("memory"), "{}", out.stderr);
}

#[test]
fn version_flag() {
    let out = run_ferry(&["--version"], DEADLINE);
    assert_eq!(out.code(), Some(0));
    assert!(out.stdout.starts_with("ferry "));
}
