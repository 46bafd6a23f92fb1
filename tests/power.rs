//! What the host presses and how the VM ends, with the real ferry binary and the probe guest:
//! `SendCtrlAltDel` reaches the guest's keyboard (and does not end the VM by itself), the ACPI
//! power button reaches an ACPI guest that then powers off, `ferry ctl shutdown --graceful` waits
//! for the guest and ends it after its timeout, and a press the guest has not read yet survives a
//! snapshot.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ctl, wait_for_socket, FerryProcess, TempDir};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

fn action(socket: &Path, action_type: &str) -> (u16, String) {
    let body = json!({ "action_type": action_type }).to_string();
    common::http(socket, "PUT", "/actions", Some(&body))
}

fn fault(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// `ferry run` of the probe with `cmdline` and an API socket; waits for the API.
fn start(dir: &Path, name: &str, cmdline: &str, extra: &[&str]) -> (FerryProcess, PathBuf) {
    let (vm, socket) = FerryProcess::spawn_probe_with_api(dir, name, cmdline, extra);
    wait_for_socket(&socket, DEADLINE);
    (vm, socket)
}

/// Firecracker's `SendCtrlAltDel` presses the keys on the guest's i8042 keyboard: the probe reads
/// the scan codes (set 2: Ctrl, Alt, Delete down, then up), then powers off the ACPI way.
#[test]
fn send_ctrl_alt_del_reaches_the_guests_keyboard() {
    let dir = TempDir::new("power-cad");
    let (mut vm, socket) = start(
        dir.path(),
        "vm",
        "probe.test=keyboard,poweroff",
        &["--exit-device"],
    );
    vm.wait_for_output("probe: keyboard: ready", DEADLINE);
    let (status, text) = action(&socket, "SendCtrlAltDel");
    assert_eq!(status, 204, "{text}");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    let out = vm.stdout();
    assert!(
        out.contains(
            "probe: keyboard: PASS ctrl-alt-del=1 scancodes=14,11,e0,71,e0,f0,71,f0,11,f0,14"
        ),
        "{out}"
    );
    assert!(out.contains("probe: poweroff: PASS"), "{out}");
}

/// A key press alone ends nothing: a guest that ignores it keeps running (Firecracker's
/// behaviour; ferry used to end the VM at once). `PowerOff` then ends it with status 0.
#[test]
fn a_guest_that_ignores_ctrl_alt_del_keeps_running_until_powered_off() {
    let dir = TempDir::new("power-ignore");
    let (mut vm, socket) = start(
        dir.path(),
        "vm",
        "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1",
        &[],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let (status, text) = action(&socket, "SendCtrlAltDel");
    assert_eq!(status, 204, "{text}");
    // The API still answers and the guest still runs after the keys were delivered.
    let (status, text) = common::http(&socket, "GET", "/", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Running"), "{text}");
    assert!(vm.is_running());
    let (status, text) = action(&socket, "PowerOff");
    assert_eq!(status, 204, "{text}");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
}

/// `ferry ctl shutdown --graceful`: the power button reaches the probe through the GED's event
/// register; the probe powers off (S5); ctl reports a graceful shutdown.
#[test]
fn graceful_shutdown_presses_the_power_button_and_the_guest_powers_off() {
    let dir = TempDir::new("power-button");
    let (mut vm, socket) = start(dir.path(), "vm", "probe.test=power_button", &[]);
    vm.wait_for_output("probe: power_button: ready", DEADLINE);
    let out = ctl(
        &socket,
        &["--json", "shutdown", "--graceful", "--timeout", "120"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["graceful"], true, "{}", out.stdout);
    assert_eq!(answer["requested_with"], "PowerButton");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    let serial = vm.stdout();
    assert!(
        serial.contains("probe: power_button: PASS pressed events=0x1 port=0x603"),
        "{serial}"
    );
}

/// A guest started without ACPI has no power button: the API says so (400), and a graceful
/// shutdown falls back to Ctrl-Alt-Del, which this guest handles.
#[test]
fn without_acpi_the_power_button_is_refused_and_graceful_shutdown_uses_ctrl_alt_del() {
    let dir = TempDir::new("power-noacpi");
    let (mut vm, socket) = start(
        dir.path(),
        "vm",
        "probe.test=keyboard",
        &["--acpi", "off", "--exit-device"],
    );
    vm.wait_for_output("probe: keyboard: ready", DEADLINE);
    let (status, text) = action(&socket, "PowerButton");
    assert_eq!(status, 400, "{text}");
    assert!(fault(&text).contains("no ACPI power button"), "{text}");
    let out = ctl(&socket, &["shutdown", "--graceful"], DEADLINE);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("guest shut down (SendCtrlAltDel)"),
        "{}",
        out.stdout
    );
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    assert!(vm.stdout().contains("probe: keyboard: PASS ctrl-alt-del=1"));
}

/// A guest that ignores the button is ended once the timeout has passed.
#[test]
fn graceful_shutdown_ends_a_guest_that_ignores_the_button_after_the_timeout() {
    let dir = TempDir::new("power-timeout");
    let (mut vm, socket) = start(
        dir.path(),
        "vm",
        "probe.test=dirty probe.dirty_mib=1 probe.dirty_rate_mib=1",
        &[],
    );
    vm.wait_for_output("probe: dirty: running", DEADLINE);
    let out = ctl(
        &socket,
        &["shutdown", "--graceful", "--timeout", "1"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("guest did not shut down within 1 s after PowerButton; powered off"),
        "{}",
        out.stdout
    );
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    // `--timeout` only makes sense with `--graceful`.
    let out = ctl(&socket, &["shutdown", "--timeout", "1"], DEADLINE);
    assert_ne!(out.code(), Some(0));
}

/// Keys and a button press made while the guest is paused, before it could read them, travel in
/// a snapshot: the restored guest reads the scan codes, then sees the button and powers off.
#[test]
fn pending_keys_and_button_press_survive_a_snapshot() {
    let dir = TempDir::new("power-snap");
    let (mut vm, socket) = start(dir.path(), "vm", "probe.test=keyboard,power_button", &[]);
    vm.wait_for_output("probe: keyboard: ready", DEADLINE);
    assert_eq!(ctl(&socket, &["pause"], DEADLINE).code(), Some(0));
    for press in ["SendCtrlAltDel", "PowerButton"] {
        let (status, text) = action(&socket, press);
        assert_eq!(status, 204, "{press}: {text}");
    }
    let snap = dir.path().join("snap");
    let out = ctl(
        &socket,
        &["snapshot", "--to", snap.to_str().unwrap(), "--keep-paused"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    drop(vm);

    let mut restored = FerryProcess::spawn(
        dir.path(),
        "restored",
        &["run", "--restore", snap.to_str().unwrap()],
    );
    assert_eq!(
        restored.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        restored.stderr()
    );
    let serial = restored.stdout();
    assert!(
        serial.contains("probe: keyboard: PASS ctrl-alt-del=1"),
        "{serial}"
    );
    assert!(
        serial.contains("probe: power_button: PASS pressed events=0x1"),
        "{serial}"
    );
}
