//! Custom CPU templates (Firecracker's `PUT /cpu-config` format, also `ferry run --cpu-template`)
//! with the real ferry binary: the probe reads CPUID and IA32_MISC_ENABLE, and every bit the
//! template names is what it says while every other bit is what ferry gives without a template.

mod common;

use std::time::Duration;

use common::{run_probe, TempDir};

const DEADLINE: Duration = Duration::from_secs(120);

/// The probe's `cpuid` values: (leaf1_ecx, leaf1_edx, leaf7_ebx, misc_enable).
fn cpu(out: &common::RunOutput) -> (u64, u64, u64, u64) {
    (
        hex(out, "leaf1_ecx"),
        hex(out, "leaf1_edx"),
        hex(out, "leaf7_ebx"),
        hex(out, "misc_enable"),
    )
}

/// One hexadecimal value of the probe's `cpuid` line (the test must have passed).
fn hex(out: &common::RunOutput, key: &str) -> u64 {
    out.assert_pass("cpuid");
    let text = out
        .probe_value("cpuid", key)
        .unwrap_or_else(|| panic!("no {key} in {}", out.stdout));
    u64::from_str_radix(&text, 16).unwrap_or_else(|e| panic!("{key}={text}: {e}"))
}

#[test]
fn a_custom_template_sets_clears_and_keeps_cpuid_and_msr_bits() {
    let dir = TempDir::new("cpu-template");
    let plain = run_probe("probe.test=cpuid", &[], DEADLINE);
    let (ecx1, edx1, ebx7, misc) = cpu(&plain);

    // Leaf 1 ECX: clear the hypervisor bit (31), set bit 0 (SSE3); leaf 1 EDX: set bit 30
    // (reserved); IA32_MISC_ENABLE: clear fast strings (0), which ferry sets. (Only bits the
    // PVM build hosts honour: there the probe's ring-0 CPUID comes partly from the host's
    // instruction emulator, which ignores the vCPU's table for leaf 7 and keeps some leaf-1 EDX
    // features such as PSE; on hardware KVM the table is the whole answer.)
    let template = dir.path().join("template.json");
    std::fs::write(
        &template,
        r#"{
          "cpuid_modifiers": [
            {"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
              {"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1"},
              {"register": "edx", "bitmap": "0bx1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}
          ],
          "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b0"}]
        }"#,
    )
    .unwrap();
    let templated = run_probe(
        "probe.test=cpuid",
        &["--cpu-template", template.to_str().unwrap()],
        DEADLINE,
    );
    let (t_ecx1, t_edx1, t_ebx7, t_misc) = cpu(&templated);
    assert_eq!(misc & 1, 1, "ferry enables fast strings");
    assert_eq!(t_ecx1, (ecx1 & !(1 << 31)) | 1, "leaf 1 ECX");
    assert_eq!(t_edx1, edx1 | (1 << 30), "leaf 1 EDX");
    assert_eq!(t_ebx7, ebx7, "leaf 7 untouched");
    assert_eq!(t_misc, misc & !1, "IA32_MISC_ENABLE");
}

#[test]
fn a_template_is_refused_when_bad_and_when_the_host_lacks_what_it_names() {
    let dir = TempDir::new("cpu-template-bad");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "modifiers": [{"register": "ecx", "bitmap": "0b2"}]}]}"#,
    )
    .unwrap();
    let out = run_probe(
        "probe.test=cpuid",
        &["--cpu-template", bad.to_str().unwrap()],
        DEADLINE,
    );
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("use 0, 1 or x"), "{}", out.stderr);

    // A leaf KVM does not report is an error, not a silent no-op.
    let missing = dir.path().join("missing.json");
    std::fs::write(
        &missing,
        r#"{"cpuid_modifiers": [{"leaf": "0x4fffffff", "subleaf": 9, "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]}"#,
    )
    .unwrap();
    let out = run_probe(
        "probe.test=cpuid",
        &["--cpu-template", missing.to_str().unwrap()],
        DEADLINE,
    );
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("0x4fffffff"), "{}", out.stderr);
}

/// The same template through the API (`PUT /cpu-config` before boot, 400 after).
#[test]
fn put_cpu_config_applies_before_boot_and_is_refused_after() {
    let dir = TempDir::new("cpu-config-api");
    let plain = run_probe("probe.test=cpuid", &[], DEADLINE);
    let (ecx1, _, _, _) = cpu(&plain);
    let socket = dir.path().join("api.sock");
    let mut vm = common::FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    common::wait_for_socket(&socket, DEADLINE);
    let template = r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#;
    let put = |path: &str, body: &str| common::http(&socket, "PUT", path, Some(body));
    assert_eq!(put("/cpu-config", template).0, 204);
    let probe = common::probe_bin();
    let boot = serde_json::json!({"kernel_image_path": probe, "boot_args": "probe.test=cpuid"});
    assert_eq!(put("/boot-source", &boot.to_string()).0, 204);
    assert_eq!(
        put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let (status, text) = put("/cpu-config", template);
    assert_eq!(status, 400, "{text}");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    let line = vm
        .stdout()
        .lines()
        .find(|l| l.starts_with("probe: cpuid: PASS"))
        .unwrap_or_default()
        .to_string();
    let want = format!("leaf1_ecx={:08x}", ecx1 & !(1 << 31));
    assert!(line.contains(&want), "{line} (want {want})");
}

/// Firecracker's static templates by name (`ferry run --cpu-template T2|T2S|C3`): the guest sees
/// the template's CPU signature and loses the features it hides, and T2S's fixed
/// IA32_ARCH_CAPABILITIES. (Asserted on what the probe reads from the vCPU's own CPUID table and
/// MSRs on the PVM build hosts: leaf 1 EAX/ECX and the MSR; leaf 7 there comes from the host.)
#[test]
fn static_templates_reach_the_guest() {
    let plain = run_probe("probe.test=cpuid", &[], DEADLINE);
    let run = |name: &str| run_probe("probe.test=cpuid", &["--cpu-template", name], DEADLINE);
    let signature = |out: &common::RunOutput| hex(out, "leaf1_eax") & 0x0fff_3fff;
    let (ecx1, arch_cap) = (
        hex(&plain, "leaf1_ecx"),
        plain.probe_value("cpuid", "arch_cap"),
    );

    let t2 = run("T2");
    assert_eq!(signature(&t2), 0x306f2, "T2 presents a Haswell");
    assert_eq!(hex(&t2, "leaf1_ecx"), ecx1 & !0x0004_cdfc, "T2 leaf 1 ECX");
    assert_eq!(
        t2.probe_value("cpuid", "arch_cap"),
        arch_cap,
        "T2 keeps the MSR"
    );

    let t2s = run("T2S");
    assert_eq!(signature(&t2s), 0x306f2);
    assert_eq!(
        hex(&t2s, "leaf1_ecx"),
        ecx1 & !0x0004_cdfc,
        "T2S leaf 1 ECX"
    );
    assert_eq!(
        hex(&t2s, "arch_cap"),
        0x0c0a_0c4c,
        "T2S IA32_ARCH_CAPABILITIES"
    );

    let c3 = run("C3");
    assert_eq!(signature(&c3), 0x306e4, "C3 presents an Ivy Bridge");
    assert_eq!(
        hex(&c3, "leaf1_ecx") & !HOST_REPORTED,
        ecx1 & !0x0040_dd3c & !HOST_REPORTED,
        "C3 leaf 1 ECX"
    );
}

/// Leaf 1 ECX bits 12 (FMA) and 22 (MOVBE), which C3 clears: the PVM build hosts' instruction
/// emulator reports them whatever the vCPU's CPUID table says, so the probe cannot see them
/// cleared there (the unit tests check the masks themselves).
const HOST_REPORTED: u64 = (1 << 12) | (1 << 22);

/// T2A is an AMD template: on an Intel host (the build hosts) ferry refuses to start, as
/// Firecracker does; a mistyped name lists the names.
#[test]
fn a_static_template_for_the_other_vendor_or_unknown_is_refused() {
    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains("GenuineIntel");
    let (refused, other) = if intel {
        ("T2A", "AMD")
    } else {
        ("T2", "Intel")
    };
    let out = run_probe("probe.test=cpuid", &["--cpu-template", refused], DEADLINE);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("is for {other} CPUs")),
        "{}",
        out.stderr
    );
    let out = run_probe("probe.test=cpuid", &["--cpu-template", "T3"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("T2CL"), "{}", out.stderr);
}

/// Through the API: `machine-config.cpu_template` is echoed by `GET /machine-config` and
/// `GET /vm/config`; a custom template replaces it and a static one replaces a custom one (one
/// slot, the last set, as in Firecracker); a PUT without the field keeps it; the wrong vendor's
/// template is refused at InstanceStart; the guest boots with C3.
#[test]
fn machine_config_cpu_template_over_the_api() {
    let dir = TempDir::new("cpu-template-api");
    let plain = run_probe("probe.test=cpuid", &[], DEADLINE);
    let ecx1 = hex(&plain, "leaf1_ecx");
    let socket = dir.path().join("api.sock");
    let mut vm = common::FerryProcess::spawn(
        dir.path(),
        "vm",
        &["run", "--api-socket", socket.to_str().unwrap()],
    );
    common::wait_for_socket(&socket, DEADLINE);
    let req =
        |method: &str, path: &str, body: Option<&str>| common::http(&socket, method, path, body);
    let template_of = |path: &str, pick: &dyn Fn(&serde_json::Value) -> serde_json::Value| {
        let (status, text) = req("GET", path, None);
        assert_eq!(status, 200, "{text}");
        pick(&serde_json::from_str(&text).expect("JSON"))
    };
    let machine = |v: &serde_json::Value| v["cpu_template"].clone();
    let full = |v: &serde_json::Value| v["machine-config"]["cpu_template"].clone();

    let put_machine = |template: Option<&str>| {
        let mut body = serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128});
        if let Some(t) = template {
            body["cpu_template"] = t.into();
        }
        req("PUT", "/machine-config", Some(&body.to_string()))
    };
    assert_eq!(put_machine(Some("T2S")).0, 204);
    assert_eq!(template_of("/machine-config", &machine), "T2S");
    assert_eq!(template_of("/vm/config", &full), "T2S");
    assert_eq!(put_machine(None).0, 204, "no field: the template stays");
    assert_eq!(template_of("/machine-config", &machine), "T2S");
    let custom = r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#;
    assert_eq!(req("PUT", "/cpu-config", Some(custom)).0, 204);
    assert_eq!(
        template_of("/machine-config", &machine),
        serde_json::Value::Null
    );
    let (status, text) = put_machine(Some("V1N1"));
    assert_eq!(status, 400);
    assert!(text.contains("aarch64"), "{text}");

    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains("GenuineIntel");
    if intel {
        let (status, _) = req(
            "PATCH",
            "/machine-config",
            Some(r#"{"cpu_template": "T2A"}"#),
        );
        assert_eq!(status, 204);
        let boot = serde_json::json!({"kernel_image_path": common::probe_bin(), "boot_args": "probe.test=cpuid"});
        assert_eq!(req("PUT", "/boot-source", Some(&boot.to_string())).0, 204);
        let (status, text) = req(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        );
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("is for AMD CPUs"), "{text}");
    }
    assert_eq!(put_machine(Some("C3")).0, 204);
    let boot = serde_json::json!({"kernel_image_path": common::probe_bin(), "boot_args": "probe.test=cpuid"});
    assert_eq!(req("PUT", "/boot-source", Some(&boot.to_string())).0, 204);
    let (status, text) = req(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    if !intel {
        // C3 is an Intel template: refused here as T2A is on Intel.
        assert_eq!(status, 400, "{text}");
        return;
    }
    assert_eq!(status, 204, "{text}");
    assert_eq!(vm.wait_exit(DEADLINE).code(), Some(0), "{}", vm.stderr());
    let line = vm
        .stdout()
        .lines()
        .find(|l| l.starts_with("probe: cpuid: PASS"))
        .unwrap_or_default()
        .to_string();
    let seen = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("leaf1_ecx="))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| panic!("no leaf1_ecx in {line:?}"));
    assert_eq!(
        seen & !HOST_REPORTED,
        ecx1 & !0x0040_dd3c & !HOST_REPORTED,
        "{line}"
    );
    assert!(line.contains("leaf1_eax=000306e4"), "{line}");
}

/// Firecracker's config file: `machine-config.cpu_template` reaches the guest through
/// `ferry firecracker --no-api --config-file`.
#[test]
fn config_file_static_template_reaches_the_guest() {
    let dir = TempDir::new("cpu-template-config-file");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": common::probe_bin(), "boot_args": "probe.test=cpuid"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2S"},
        "drives": [],
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let child = std::process::Command::new(common::ferry_bin())
        .args(["firecracker", "--no-api", "--config-file"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning");
    let out = common::wait_with_deadline(child, DEADLINE);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(hex(&out, "leaf1_eax") & 0x0fff_3fff, 0x306f2);
    assert_eq!(hex(&out, "arch_cap"), 0x0c0a_0c4c);
}
