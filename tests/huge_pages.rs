//! `huge_pages: "2M"` (machine-config) and `--huge-pages 2M`: guest memory on reserved hugetlbfs
//! pages, and a clear error when the host has too few. Reserves pages through
//! `/proc/sys/vm/nr_hugepages` (root) and gives them back afterwards.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{http, probe_bin, run_probe, wait_for_socket, FerryProcess, TempDir};

const DEADLINE: Duration = Duration::from_secs(120);
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Puts `nr_hugepages` back to what it was when dropped (also when the test fails).
struct Reservation(String);

impl Reservation {
    /// Asks for `extra` more huge pages; returns how many the kernel could add.
    fn add(extra: u64) -> (Self, u64) {
        let before = std::fs::read_to_string(NR_HUGEPAGES).unwrap();
        let total: u64 = before.trim().parse().unwrap();
        let _ = std::fs::write(NR_HUGEPAGES, format!("{}", total + extra));
        let now: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (Self(before), now.saturating_sub(total))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.0.trim());
    }
}

/// Whether `pid` has a mapping of `kib` KiB on 2 MiB pages (its smaps).
fn has_hugetlb_mapping(pid: u32, kib: u64) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("KernelPageSize:") {
            if size == kib && v.trim() == "2048 kB" {
                return true;
            }
        }
    }
    false
}

fn start_over_api(dir: &Path, mem_mib: u64) -> (FerryProcess, std::path::PathBuf) {
    let socket = dir.join("fc.sock");
    let vm = FerryProcess::spawn(
        dir,
        "fc",
        &["firecracker", "--api-sock", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    let body = serde_json::json!({"vcpu_count": 1, "mem_size_mib": mem_mib, "huge_pages": "2M"});
    let (status, text) = http(&socket, "PUT", "/machine-config", Some(&body.to_string()));
    assert_eq!(status, 204, "{text}");
    let (_, config) = http(&socket, "GET", "/machine-config", None);
    assert!(config.contains("\"huge_pages\":\"2M\""), "{config}");
    let body = serde_json::json!({
        "kernel_image_path": probe_bin(),
        "boot_args": "probe.test=boot,dirty probe.dirty_mib=1 probe.dirty_rate_mib=1",
    });
    let (status, text) = http(&socket, "PUT", "/boot-source", Some(&body.to_string()));
    assert_eq!(status, 204, "{text}");
    (vm, socket)
}

#[test]
fn huge_pages_2m_backs_guest_memory_or_fails_the_start_clearly() {
    // More than the host has free: InstanceStart is refused with a message that says why, and
    // the API stays up.
    let free_mib = meminfo("HugePages_Free:") * 2;
    let dir = TempDir::new("hugepages-short");
    let (mut vm, socket) = start_over_api(dir.path(), free_mib + 128);
    let (status, text) = http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("huge pages") && text.contains("nr_hugepages"),
        "{text}"
    );
    assert!(vm.is_running());
    assert_eq!(http(&socket, "GET", "/", None).0, 200);
    drop(vm);

    // Bad values are refused when the configuration is given.
    let out = run_probe("probe.test=boot", &["--huge-pages", "1G"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let dir = TempDir::new("hugepages-odd");
    let socket = dir.path().join("fc.sock");
    let _vm = FerryProcess::spawn(
        dir.path(),
        "fc",
        &["firecracker", "--api-sock", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket, DEADLINE);
    for body in [
        r#"{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#,
    ] {
        let (status, text) = http(&socket, "PUT", "/machine-config", Some(body));
        assert_eq!(status, 400, "{body}: {text}");
    }

    // With pages reserved: the guest runs on them.
    let (_reservation, added) = Reservation::add(64);
    if added < 64 {
        eprintln!("the kernel reserved only {added} of 64 huge pages; skipping the success case");
        return;
    }
    let dir = TempDir::new("hugepages-ok");
    let (mut vm, socket) = start_over_api(dir.path(), 128);
    let (status, text) = http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{text}");
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    assert!(
        vm.stdout().contains("probe: boot: PASS mem_mib=127"),
        "{}",
        vm.stdout()
    );
    assert!(
        has_hugetlb_mapping(vm.child.id(), 128 << 10),
        "no 128 MiB mapping on 2 MiB pages in ferry's smaps"
    );
    drop(vm);

    // The command line too.
    let out = run_probe(
        "probe.test=boot",
        &["--huge-pages", "2M", "--memory", "128M"],
        DEADLINE,
    );
    out.assert_pass("boot");
    assert_eq!(out.code(), Some(0));
}
