//! virtio-blk on iSCSI LUNs, end to end: the real ferry binary, its own initiator, the probe's
//! `blk` test and a real tgtd (Debian `tgt`), started and cleaned up per test.

mod common;

#[path = "../devices/tests/iscsi_support/mod.rs"]
mod iscsi_support;

use std::time::Duration;

use common::{run_probe, wait_for_socket, FerryProcess, TempDir};
use ferry_probe::{crc32::crc32, pattern};
use iscsi_support::{Setup, Tgtd};

const DEADLINE: Duration = Duration::from_secs(120);
const LUN_SIZE: u64 = 8 << 20;

fn disk(url: &str, extra: &str) -> String {
    format!("path={url}{extra}")
}

fn expected_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pattern::fill(seed, 0, &mut v);
    v
}

#[test]
fn reads_and_writes_a_lun_through_the_guest() {
    let target = Tgtd::start(LUN_SIZE, Setup::default());
    let content: Vec<u8> = (0..LUN_SIZE as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&target.lun_file, &content).unwrap();

    let arg = disk(&target.url(1), ",id=san");
    let out = run_probe("probe.test=blk", &["--disk", &arg], DEADLINE);
    out.assert_pass("blk");
    assert_eq!(out.probe_value("blk", "sectors").as_deref(), Some("16384"));
    assert_eq!(
        out.probe_value("blk", "crc32"),
        Some(format!("{:08x}", crc32(&content[..256 * 1024])))
    );

    let out = run_probe(
        "probe.test=blk probe.blk_write=21",
        &["--disk", &arg],
        DEADLINE,
    );
    out.assert_pass("blk");
    assert_eq!(
        target.read_file(0, 256 * 1024),
        expected_pattern(21, 256 * 1024)
    );
    assert_eq!(
        target.read_file(256 * 1024, 4096),
        content[256 * 1024..256 * 1024 + 4096]
    );
}

#[test]
fn chap_with_the_right_and_the_wrong_secret() {
    let setup = Setup {
        chap: Some(("ferry".into(), "initiator-secret-1".into())),
        ..Setup::default()
    };
    let target = Tgtd::start(LUN_SIZE, setup);
    let dir = TempDir::new("iscsi-chap");
    let good = dir.path().join("good.chap");
    std::fs::write(&good, "username=ferry\npassword=initiator-secret-1\n").unwrap();
    let bad = dir.path().join("bad.chap");
    std::fs::write(&bad, "username=ferry\npassword=wrong-secret-123\n").unwrap();

    let arg = disk(
        &target.url(1),
        &format!(",chap-secret-file={}", good.display()),
    );
    let out = run_probe("probe.test=blk", &["--disk", &arg], DEADLINE);
    out.assert_pass("blk");

    let arg = disk(
        &target.url(1),
        &format!(",chap-secret-file={}", bad.display()),
    );
    let out = run_probe("probe.test=blk", &["--disk", &arg], DEADLINE);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.error_line().contains("authentication failed"),
        "{}",
        out.stderr
    );
    // The secret never appears in the message.
    assert!(!out.stderr.contains("wrong-secret-123"));
}

#[test]
fn crc32c_digests() {
    let setup = Setup {
        digests: true,
        ..Setup::default()
    };
    let target = Tgtd::start(LUN_SIZE, setup);
    let url = format!("{}?header-digest=crc32c&data-digest=crc32c", target.url(1));
    let out = run_probe(
        "probe.test=blk probe.blk_write=3",
        &["--disk", &disk(&url, "")],
        DEADLINE,
    );
    out.assert_pass("blk");
    assert_eq!(
        target.read_file(0, 256 * 1024),
        expected_pattern(3, 256 * 1024)
    );
}

#[test]
fn missing_lun_and_unreachable_portal_are_clear_errors() {
    let target = Tgtd::start(LUN_SIZE, Setup::default());
    let out = run_probe(
        "probe.test=blk",
        &["--disk", &disk(&target.url(7), "")],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.error_line().contains("LUN 7 does not exist"),
        "{}",
        out.stderr
    );

    let port = common::free_port();
    let url = format!("iscsi://127.0.0.1:{port}/{}/1", iscsi_support::IQN);
    let out = run_probe("probe.test=blk", &["--disk", &disk(&url, "")], DEADLINE);
    assert_eq!(out.code(), Some(1));
    assert!(out.error_line().contains("unreachable"), "{}", out.stderr);
}

#[test]
fn target_restart_during_guest_io_loses_nothing() {
    let mut target = Tgtd::start(LUN_SIZE, Setup::default());
    let dir = TempDir::new("iscsi-restart");
    let probe = common::probe_bin();
    let arg = disk(&target.url(1), "");
    // Endless rounds of 4 MiB written, flushed and read back by the guest: the target goes away
    // and comes back while they run, however fast the host is.
    let socket = dir.path().join("vm.sock");
    let mut vm = FerryProcess::spawn(
        dir.path(),
        "vm",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=blk probe.blk_write=99 probe.blk_kib=4096 probe.blk_rounds=0",
            "--exit-device",
            "--disk",
            &arg,
            "--api-socket",
            socket.to_str().unwrap(),
            "--log-level",
            "info",
        ],
    );
    vm.wait_for_output(common::ROUND_VERIFIED_1, DEADLINE);
    target.kill();
    // The outage's length is the test's choice, not a guess at how long anything takes.
    std::thread::sleep(Duration::from_millis(700));
    target.spawn();
    let before = vm.stdout().matches(common::ROUND_VERIFIED).count();
    // Two more verified rounds: at least one written and read back wholly after the restart.
    vm.wait_for_occurrences(common::ROUND_VERIFIED, before + 2, DEADLINE);
    wait_for_socket(&socket, DEADLINE);
    let verified = common::assert_disk_holds_blk_rounds(&socket, dir.path(), 99, || {
        target.read_file(0, 4 << 20)
    });
    let stdout = vm.stdout();
    assert!(
        !stdout.contains("probe: blk: FAIL"),
        "{stdout}\n{}",
        vm.stderr()
    );
    assert!(
        verified >= before as u64 + 2,
        "{verified} rounds:\n{stdout}"
    );
    // The outage really hit the session: ferry logged in again.
    assert!(
        vm.stderr().contains("reconnect"),
        "no reconnect logged:\n{}",
        vm.stderr()
    );
}
