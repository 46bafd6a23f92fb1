//! Backends against real host interfaces: a tap, a multiqueue tap, an inherited fd, and a
//! macvtap on a veth (created here, deleted by a guard even on panic). Skipped when not root.

use std::process::Command;

use super::vnet::tun_offload_flags;
use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    uid == 0 && Path::new("/dev/net/tun").exists()
}

fn name(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Deletes a link on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?}");
}

fn spec(backend: NetBackendSpec, mac: Option<&str>, queues: u16) -> NetSpec {
    NetSpec {
        backend,
        mac: mac.map(str::to_string),
        queues,
    }
}

const ALL_GUEST_OFFLOADS: u64 = (1 << 1) | (1 << 7) | (1 << 8) | (1 << 9);

#[test]
fn tap_is_created_up_and_takes_offloads_and_fd_handover() {
    if !is_root() {
        eprintln!("skipped: needs root and /dev/net/tun");
        return;
    }
    let tap = name("ftt");
    let b = open_net_backend(&spec(
        NetBackendSpec::Tap(tap.clone()),
        Some("52:54:00:aa:bb:cc"),
        1,
    ))
    .unwrap();
    assert_eq!(b.guest_mac().to_string(), "52:54:00:aa:bb:cc");
    let flags = std::fs::read_to_string(format!("/sys/class/net/{tap}/flags")).unwrap();
    assert!(
        i64::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap() & 1 != 0,
        "tap is up"
    );
    b.set_offload(tun_offload_flags(ALL_GUEST_OFFLOADS))
        .unwrap();
    // The same tap handed over as an fd.
    let fd = b.fd(0).unwrap();
    let inherited = open_net_backend(&spec(NetBackendSpec::Fd(fd), None, 1)).unwrap();
    assert_eq!(
        inherited.kind(),
        &BackendKind::Fd {
            fd,
            name: tap.clone()
        }
    );
    assert!(!inherited.guest_mac().is_multicast());
    inherited
        .set_offload(tun_offload_flags(ALL_GUEST_OFFLOADS))
        .unwrap();
    drop(inherited);
    drop(b);
    // ferry created it, so it goes away with ferry's fds.
    assert!(!Path::new(&format!("/sys/class/net/{tap}")).exists());
}

#[test]
fn multiqueue_tap_opens_one_fd_per_queue() {
    if !is_root() {
        eprintln!("skipped: needs root and /dev/net/tun");
        return;
    }
    let tap = name("ftq");
    let b = open_net_backend(&spec(NetBackendSpec::Tap(tap), None, 3)).unwrap();
    assert_eq!(b.queue_pairs(), 3);
    b.set_queue_enabled(2, false).unwrap();
    b.set_queue_enabled(2, true).unwrap();
}

#[test]
fn macvtap_dictates_the_guest_mac() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lower = name("fvl");
    let peer = name("fvp");
    let mvt = name("fmv");
    ip(&["link", "add", &lower, "type", "veth", "peer", "name", &peer]);
    let _guard = Link(lower.clone());
    ip(&[
        "link", "add", "link", &lower, "name", &mvt, "type", "macvtap", "mode", "bridge",
    ]);
    let own: MacAddr = std::fs::read_to_string(format!("/sys/class/net/{mvt}/address"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let b = open_net_backend(&spec(NetBackendSpec::Macvtap(mvt.clone()), None, 2)).unwrap();
    assert_eq!(b.guest_mac(), own);
    assert_eq!(b.queue_pairs(), 2);
    b.set_offload(tun_offload_flags(ALL_GUEST_OFFLOADS))
        .unwrap();
    drop(b);

    let same = own.to_string();
    let b = open_net_backend(&spec(NetBackendSpec::Macvtap(mvt.clone()), Some(&same), 1)).unwrap();
    // An inherited macvtap fd follows the same MAC rule.
    let e = open_net_backend(&spec(
        NetBackendSpec::Fd(b.fd(0).unwrap()),
        Some("02:00:00:00:00:01"),
        1,
    ));
    assert!(matches!(e, Err(NetError::MacMismatch { .. })), "{e:?}");
    drop(b);

    let wrong = if own.0 == [2, 0, 0, 0, 0, 1] {
        "02:00:00:00:00:02"
    } else {
        "02:00:00:00:00:01"
    };
    let e =
        open_net_backend(&spec(NetBackendSpec::Macvtap(mvt.clone()), Some(wrong), 1)).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("only delivers frames addressed to its own MAC"),
        "{text}"
    );
    assert!(
        text.contains(&own.to_string())
            && text.contains(&format!("ip link set {mvt} address {wrong}")),
        "{text}"
    );
    // The lower veth is not a macvtap, and not a tap either.
    assert!(matches!(
        open_net_backend(&spec(NetBackendSpec::Macvtap(lower.clone()), None, 1)),
        Err(NetError::NotMacvtap(_))
    ));
    assert!(matches!(
        open_net_backend(&spec(NetBackendSpec::Tap(lower.clone()), None, 1)),
        Err(NetError::NotTap(_))
    ));
}
