//! virtio-net end to end: the probe guest on a macvtap and on a tap, each in network namespaces
//! the test creates (and deletes, even on panic), talking to a peer namespace both ways. Also
//! the operator errors: a wrong MAC on a macvtap, a missing interface.
//!
//! Needs root (namespaces, macvtap). Each test uses its own names (pid + counter), so tests
//! run in parallel.

mod common;

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
            "probe.test=net probe.net_ip={}/24 probe.net_peer={} probe.net_count=3 probe.net_linger_ms=20000",
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
        // Waits for 3 replies, for as long as the guest may take to boot and configure.
        let pinger = Command::new("ip")
            .args([
                "netns", "exec", &self.b.0, "ping", "-c", "3", "-i", "0.5", "-w", "150",
            ])
            .arg(self.guest_ip())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning ping");
        let out = wait_with_deadline(child, DEADLINE);
        let ping_ok = wait_ping(pinger);
        (out, ping_ok)
    }
}

/// Reaps ping, killing it if the guest is gone and it still waits.
fn wait_ping(mut pinger: std::process::Child) -> bool {
    for _ in 0..100 {
        if let Ok(Some(status)) = pinger.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = pinger.kill();
    let _ = pinger.wait();
    false
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
