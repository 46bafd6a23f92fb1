use super::rules::{mentions, When};
use super::*;

#[test]
fn every_kind_compiles_in_both_modes() {
    for kind in ThreadKind::ALL {
        for log in [false, true] {
            let p = compile(kind, log).expect("compiles");
            assert!(
                p.len() < 4096,
                "{} has {} instructions",
                kind.name(),
                p.len()
            );
        }
    }
}

/// A thread starts under its creator's filter: the controller's list must allow everything any
/// other kind's does, or the narrower kind would be cut off by the controller's filter.
#[test]
fn controller_covers_every_kind() {
    let controller = ThreadKind::Controller.table();
    for kind in ThreadKind::ALL {
        for (nr, alts) in kind.table() {
            let c = controller.get(&nr);
            let covered = match (c, &alts) {
                (None, _) => false,
                (Some(None), _) => true,
                (Some(Some(_)), None) => false,
                (Some(Some(calts)), Some(alts)) => alts.iter().all(|w| calts.contains(w)),
            };
            assert!(
                covered,
                "{}: syscall {nr} not covered by controller",
                kind.name()
            );
        }
    }
}

/// The debug trigger must be outside every list, or the tests that rely on it prove nothing.
#[test]
fn trigger_is_in_no_list() {
    for kind in ThreadKind::ALL {
        assert!(!mentions(&kind.table(), TRIGGER_SYSCALL), "{}", kind.name());
    }
}

#[test]
fn dangerous_calls_are_in_no_list() {
    for nr in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_setuid,
        libc::SYS_bpf,
        libc::SYS_process_vm_writev,
        libc::SYS_kexec_load,
    ] {
        for kind in ThreadKind::ALL {
            assert!(!mentions(&kind.table(), nr), "{} allows {nr}", kind.name());
        }
    }
}

/// The vCPU thread, the one a guest drives, opens nothing and talks to no network.
#[test]
fn vcpu_has_no_files_or_sockets() {
    let t = ThreadKind::Vcpu.table();
    for nr in [
        libc::SYS_openat,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_clone,
    ] {
        assert!(!mentions(&t, nr), "vcpu allows {nr}");
    }
    // ioctl only with listed requests.
    match t.get(&libc::SYS_ioctl) {
        Some(Some(alts)) => assert!(alts.iter().all(|w| matches!(w, When::ArgIn(1, _)))),
        other => panic!("vcpu ioctl rule {other:?}"),
    }
}

#[test]
fn clone_requires_clone_thread() {
    let t = ThreadKind::Controller.table();
    assert_eq!(
        t.get(&libc::SYS_clone),
        Some(&Some(vec![When::HasBits(0, libc::CLONE_THREAD as u64)]))
    );
}

#[test]
fn level_parses() {
    assert_eq!("on".parse::<SeccompLevel>(), Ok(SeccompLevel::On));
    assert_eq!("off".parse::<SeccompLevel>(), Ok(SeccompLevel::Off));
    assert_eq!("log".parse::<SeccompLevel>(), Ok(SeccompLevel::Log));
    assert!("kill".parse::<SeccompLevel>().is_err());
}

#[test]
fn firecracker_filter_file_round_trips() {
    let vcpu = compile(ThreadKind::Vcpu, false).expect("vcpu");
    let api = compile(ThreadKind::Api, false).expect("api");
    let empty = Vec::new();
    let bytes = firecracker::serialize(&[("vmm", &empty), ("api", &api), ("vcpu", &vcpu)]);
    let map = firecracker::parse(&bytes).expect("parses");
    assert_eq!(*map["vcpu"], vcpu);
    assert_eq!(*map["api"], api);
    assert!(map["vmm"].is_empty());
}

#[test]
fn firecracker_filter_file_is_checked() {
    let p = compile(ThreadKind::Vcpu, false).expect("vcpu");
    let missing = firecracker::serialize(&[("api", &p), ("vcpu", &p)]);
    assert!(firecracker::parse(&missing)
        .unwrap_err()
        .contains("missing thread category 'vmm'"));
    let unknown = firecracker::serialize(&[("vmm", &p), ("api", &p), ("other", &p)]);
    assert!(firecracker::parse(&unknown)
        .unwrap_err()
        .contains("unknown thread category"));
    let full = firecracker::serialize(&[("vmm", &p), ("api", &p), ("vcpu", &p)]);
    assert!(firecracker::parse(&full[..full.len() - 3])
        .unwrap_err()
        .contains("ends early"));
    assert!(firecracker::parse(b"{\"vmm\": {}}").is_err());
    let mut long = full.clone();
    long.push(0);
    assert!(firecracker::parse(&long)
        .unwrap_err()
        .contains("after the map"));
}
