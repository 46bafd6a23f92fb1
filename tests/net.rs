//! virtio-net end to end: the probe guest on a macvtap and on a tap, each in network namespaces
//! the test creates (and deletes, even on panic), talking to a peer namespace both ways. Also
//! the operator errors: a wrong MAC on a macvtap, a missing interface.
//!
//! Needs root (namespaces, macvtap). Each test uses its own names (pid + counter), so tests
//! run in parallel.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{ferry_bin, probe_bin, wait_with_deadline, RunOutput};

/// Generous: ring-0 guest code is instruction-emulated on PVM hosts.
const DEADLINE: Duration = Duration::from_secs(180);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique tag: interface names are limited to 15 bytes.
fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{n}", std::process::id() % 0x10000)
}

/// Runs a command line; panics with its output when it fails.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawning a command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop (with everything in it: veths, macvtaps, taps).
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn mac_of(&self, dev: &str) -> String {
        let out = self.ip(&["-o", "link", "show", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("interface has a MAC")
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Namespace `a` (ferry's side) and `b` (the peer, 10.77.N.1/24 on its veth end); the veth end
/// in `a` is `va<tag>`, up, without an address.
struct Topology {
    a: Netns,
    b: Netns,
    tag: String,
    subnet: u32,
}

impl Topology {
    fn new() -> Self {
        let tag = tag();
        let a = Netns::new(format!("ferry-a{tag}"));
        let b = Netns::new(format!("ferry-b{tag}"));
        let va = format!("va{tag}");
        let vb = format!("vb{tag}");
        sh(&[
            "ip", "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns",
            &b.0,
        ]);
        a.ip(&["link", "set", &va, "up"]);
        let subnet = 10 + COUNTER.load(Ordering::SeqCst) % 200;
        b.ip(&["addr", "add", &format!("10.77.{subnet}.1/24"), "dev", &vb]);
        b.ip(&["link", "set", &vb, "up"]);
        Self { a, b, tag, subnet }
    }

    fn peer_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn guest_ip(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    fn va(&self) -> String {
        format!("va{}", self.tag)
    }

    /// Boots the probe's `net` test inside namespace `a` with `net` as the `--net` value while
    /// namespace `b` pings the guest; returns ferry's output and whether the ping succeeded.
    fn run_probe(&self, net: &str) -> (RunOutput, bool) {
        let cmdline = format!(
            "probe.test=net probe.net_ip={}/24 probe.net_peer={} probe.net_count=3 probe.net_answer=3 probe.net_linger_ms=150000",
            self.guest_ip(),
            self.peer_ip()
        );
        let probe = probe_bin();
        let ferry = ferry_bin();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.a.0])
            .arg(&ferry)
            .args(["run", "--kernel"])
            .arg(&probe)
            .args(["--cmdline", &cmdline, "--exit-device", "--net", net])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ferry");
        // Pings the guest from namespace `b` until 3 replies, for as long as the guest may take
        // to boot and configure. In-process (raw ICMP socket on a thread inside `b`): the
        // build machines have no `ping` binary.
        let ns_b = self.b.0.clone();
        let target = [10, 77, self.subnet as u8, 2];
        let pinger =
            std::thread::spawn(move || ping_from_netns(&ns_b, target, 3, Duration::from_secs(150)));
        let out = wait_with_deadline(child, DEADLINE);
        let ping_ok = pinger.join().unwrap_or(0) >= 3;
        (out, ping_ok)
    }
}

/// Sends ICMP echo requests to `target` from inside network namespace `ns` (this thread joins
/// it) every 300 ms until `want` replies arrived or `deadline` passed; returns the replies.
fn ping_from_netns(ns: &str, target: [u8; 4], want: u32, deadline: Duration) -> u32 {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns handle");
    // SAFETY: setns on this thread only, with a valid namespace fd.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    // SAFETY: plain socket creation; closed at the end.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(
        sock >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: sets one timeval option on our socket.
    unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: sockaddr_in is plain data.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as u16;
    addr.sin_addr.s_addr = u32::from_ne_bytes(target);
    let id = (std::process::id() & 0xffff) as u16;
    let start = std::time::Instant::now();
    let mut replies = 0u32;
    let mut seq = 0u16;
    while replies < want && start.elapsed() < deadline {
        seq = seq.wrapping_add(1);
        let mut req = [0u8; 16];
        req[0] = 8;
        req[4..6].copy_from_slice(&id.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        req[8..16].copy_from_slice(b"ferrynet");
        let c = inet_checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: sends from a live buffer to a valid sockaddr_in.
        unsafe {
            libc::sendto(
                sock,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let mut buf = [0u8; 1500];
        // SAFETY: receives into a live buffer (times out after 300 ms).
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 20 {
            continue;
        }
        let ihl = usize::from(buf[0] & 15) * 4;
        let icmp = &buf[ihl.min(n as usize)..n as usize];
        if buf[12..16] == target
            && icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == id.to_be_bytes()
        {
            replies += 1;
        }
    }
    // SAFETY: closing our socket.
    unsafe { libc::close(sock) };
    replies
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn run_ferry_in(ns: Option<&Netns>, args: &[&str]) -> RunOutput {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0]).arg(ferry_bin());
            c
        }
        None => Command::new(ferry_bin()),
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ferry");
    wait_with_deadline(child, DEADLINE)
}

fn probe_args<'a>(probe: &'a str, net: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--kernel",
        probe,
        "--cmdline",
        "probe.test=boot",
        "--exit-device",
        "--net",
        net,
    ]
}

#[test]
fn macvtap_guest_and_peer_ping_each_other() {
    let t = Topology::new();
    let mvt = format!("mvt{}", t.tag);
    t.a.ip(&[
        "link",
        "add",
        "link",
        &t.va(),
        "name",
        &mvt,
        "type",
        "macvtap",
        "mode",
        "bridge",
    ]);
    t.a.ip(&["link", "set", &mvt, "up"]);
    let mac = t.a.mac_of(&mvt);
    let (out, ping_ok) = t.run_probe(&format!("macvtap={mvt}"));
    out.assert_pass("net");
    assert_eq!(
        out.probe_value("net", "mac").as_deref(),
        Some(mac.as_str()),
        "guest uses the macvtap's MAC"
    );
    assert_eq!(out.probe_value("net", "received").as_deref(), Some("3"));
    assert!(
        ping_ok,
        "the peer namespace could not ping the guest\n{}",
        out.stdout
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
}

#[test]
fn tap_guest_and_peer_ping_each_other_through_a_bridge() {
    let t = Topology::new();
    let br = format!("br{}", t.tag);
    let tap = format!("tap{}", t.tag);
    t.a.ip(&["link", "add", &br, "type", "bridge"]);
    t.a.ip(&["link", "set", &t.va(), "master", &br]);
    t.a.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    t.a.ip(&["link", "set", &tap, "master", &br]);
    t.a.ip(&["link", "set", &tap, "up"]);
    t.a.ip(&["link", "set", &br, "up"]);
    let mac = "52:54:00:77:00:02";
    let (out, ping_ok) = t.run_probe(&format!("tap={tap},mac={mac}"));
    out.assert_pass("net");
    assert_eq!(out.probe_value("net", "mac").as_deref(), Some(mac));
    assert_eq!(out.probe_value("net", "received").as_deref(), Some("3"));
    assert!(
        ping_ok,
        "the peer namespace could not ping the guest\n{}",
        out.stdout
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
}

/// A multiqueue tap: the device attaches the queue pairs in use and detaches the others
/// (TUNSETQUEUE) when the guest's driver starts it, on a vCPU thread under its seccomp filter.
/// The lab's Linux guests found that ioctl missing from the lists (ferry died of SIGSYS).
#[test]
fn a_two_queue_tap_carries_traffic_under_the_seccomp_filters() {
    let t = Topology::new();
    let br = format!("br{}", t.tag);
    let tap = format!("tap{}", t.tag);
    t.a.ip(&["link", "add", &br, "type", "bridge"]);
    t.a.ip(&["link", "set", &t.va(), "master", &br]);
    t.a.ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"]);
    t.a.ip(&["link", "set", &tap, "master", &br]);
    t.a.ip(&["link", "set", &tap, "up"]);
    t.a.ip(&["link", "set", &br, "up"]);
    let (out, ping_ok) = t.run_probe(&format!("tap={tap},mac=52:54:00:77:00:04,queues=2"));
    out.assert_pass("net");
    assert_eq!(out.probe_value("net", "received").as_deref(), Some("3"));
    assert!(ping_ok, "the peer could not ping the guest\n{}", out.stdout);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
}

#[test]
fn mtu_is_set_on_the_tap_and_told_to_the_guest() {
    let t = Topology::new();
    let br = format!("br{}", t.tag);
    let tap = format!("tap{}", t.tag);
    t.a.ip(&["link", "add", &br, "type", "bridge"]);
    t.a.ip(&["link", "set", &t.va(), "master", &br]);
    t.a.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    t.a.ip(&["link", "set", &tap, "master", &br]);
    t.a.ip(&["link", "set", &tap, "up"]);
    t.a.ip(&["link", "set", &br, "up"]);
    let (out, ping_ok) = t.run_probe(&format!("tap={tap},mac=52:54:00:77:00:03,mtu=1400"));
    out.assert_pass("net");
    assert_eq!(out.probe_value("net", "mtu").as_deref(), Some("1400"));
    assert!(ping_ok, "the peer could not ping the guest\n{}", out.stdout);
    let link = t.a.ip(&["-o", "link", "show", &tap]);
    assert!(link.contains(" mtu 1400 "), "{link}");
    // Without mtu= the feature is not offered: the guest reports none.
    let (out, _) = t.run_probe(&format!("tap={tap},mac=52:54:00:77:00:03"));
    out.assert_pass("net");
    assert_eq!(out.probe_value("net", "mtu"), None);
}

#[test]
fn wrong_mac_on_macvtap_is_refused_with_the_reason() {
    let t = Topology::new();
    let mvt = format!("mvt{}", t.tag);
    t.a.ip(&[
        "link",
        "add",
        "link",
        &t.va(),
        "name",
        &mvt,
        "type",
        "macvtap",
        "mode",
        "bridge",
    ]);
    let own = t.a.mac_of(&mvt);
    let wrong = if own == "02:00:00:00:00:01" {
        "02:00:00:00:00:02"
    } else {
        "02:00:00:00:00:01"
    };
    let probe = probe_bin();
    let net = format!("macvtap={mvt},mac={wrong}");
    let out = run_ferry_in(Some(&t.a), &probe_args(probe.to_str().unwrap(), &net));
    assert_eq!(
        out.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .contains("only delivers frames addressed to its own MAC")
            && out.stderr.contains(&own),
        "stderr: {}",
        out.stderr
    );
    // The macvtap's own MAC, spelled out, is accepted.
    let net = format!("macvtap={mvt},mac={own}");
    let out = run_ferry_in(Some(&t.a), &probe_args(probe.to_str().unwrap(), &net));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
}

#[test]
fn missing_interface_is_a_clear_error() {
    let probe = probe_bin();
    let name = format!("nope{}", tag());
    for net in [format!("macvtap={name}"), format!("tap=bad/{name}")] {
        let out = run_ferry_in(None, &probe_args(probe.to_str().unwrap(), &net));
        assert_eq!(out.code(), Some(1), "{net}: stderr: {}", out.stderr);
        assert!(
            out.stderr.lines().count() <= 3,
            "one-line error expected: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("does not exist") || out.stderr.contains("not a tap"),
            "{net}: stderr: {}",
            out.stderr
        );
    }
}

#[test]
fn a_plain_interface_is_not_a_macvtap() {
    let t = Topology::new();
    let probe = probe_bin();
    let net = format!("macvtap={}", t.va());
    let out = run_ferry_in(Some(&t.a), &probe_args(probe.to_str().unwrap(), &net));
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("is not a macvtap interface"),
        "stderr: {}",
        out.stderr
    );
}

/// A tap without `mac=`: ferry picks a MAC, and that MAC is part of the configuration that
/// snapshots (and migrations) carry, so a restore on the same tap gives the guest the same MAC
/// instead of refusing the saved state.
#[test]
fn a_chosen_mac_is_kept_through_a_snapshot_and_restore() {
    let t = Topology::new();
    let tap = format!("tap{}", t.tag);
    t.a.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    t.a.ip(&["link", "set", &tap, "up"]);
    let dir = common::TempDir::new("net-mac-snap");
    let probe = probe_bin();
    let spawn = |name: &str, args: &[&str]| {
        let child = Command::new("ip")
            .args(["netns", "exec", &t.a.0])
            .arg(ferry_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("spawning ferry");
        common::FerryProcess {
            child,
            stdout_path: dir.path().join(format!("{name}.out")),
            stderr_path: dir.path().join(format!("{name}.err")),
        }
    };
    let guest_mac = |socket: &std::path::Path| {
        let (status, text) = common::http(socket, "GET", "/vm/config", None);
        assert_eq!(status, 200, "{text}");
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config["network-interfaces"][0]["guest_mac"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let socket = dir.path().join("a.sock");
    let net = format!("tap={tap}");
    let mut vm = spawn(
        "a",
        &[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cmdline",
            "probe.test=keyboard",
            "--net",
            &net,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    vm.wait_for_output("probe: keyboard: ready", DEADLINE);
    let mac = guest_mac(&socket);
    assert_eq!(
        mac.len(),
        17,
        "GET /vm/config shows the MAC ferry chose: {mac:?}"
    );
    let snap = dir.path().join("snap");
    let out = common::ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap(), "--keep-paused"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    drop(vm);

    let socket = dir.path().join("b.sock");
    // The restore names the same tap itself (a snapshot opens only what is mapped or allowed).
    let net_map = format!("net0=tap:{tap}");
    let mut restored = spawn(
        "b",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--net-map",
            &net_map,
            "--api-socket",
            socket.to_str().unwrap(),
        ],
    );
    common::wait_for_socket(&socket, DEADLINE);
    assert_eq!(guest_mac(&socket), mac);
    let (status, text) = common::http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        restored.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        restored.stderr()
    );
    assert!(restored
        .stdout()
        .contains("probe: keyboard: PASS ctrl-alt-del=1"));

    // Firecracker's `network_overrides`: the same snapshot on another tap, same MAC.
    let tap2 = format!("tbp{}", t.tag);
    t.a.ip(&["tuntap", "add", "dev", &tap2, "mode", "tap"]);
    t.a.ip(&["link", "set", &tap2, "up"]);
    let socket = dir.path().join("c.sock");
    let mut moved = spawn("c", &["run", "--api-socket", socket.to_str().unwrap()]);
    common::wait_for_socket(&socket, DEADLINE);
    let load = serde_json::json!({
        "snapshot_path": snap.join("vmstate"),
        "mem_backend": {"backend_type": "File", "backend_path": snap.join("memory")},
        "network_overrides": [{"iface_id": "net0", "host_dev_name": tap2}],
        "resume_vm": true,
    });
    let (status, text) = common::http(&socket, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(status, 204, "{text}");
    let (_, text) = common::http(&socket, "GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"],
        tap2.as_str()
    );
    assert_eq!(config["network-interfaces"][0]["guest_mac"], mac.as_str());
    let (status, text) = common::http(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "PowerOff"}"#),
    );
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        moved.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        moved.stderr()
    );
}
