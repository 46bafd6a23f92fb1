//! Custom CPU templates (Firecracker's `PUT /cpu-config` format, also `ferry run --cpu-template`)
//! with the real ferry binary: the probe reads CPUID and IA32_MISC_ENABLE, and every bit the
//! template names is what it says while every other bit is what ferry gives without a template.

mod common;

use std::time::Duration;

use common::{run_probe, TempDir};

const DEADLINE: Duration = Duration::from_secs(120);

/// The probe's `cpuid` values: (leaf1_ecx, leaf1_edx, leaf7_ebx, misc_enable).
fn cpu(out: &common::RunOutput) -> (u64, u64, u64, u64) {
    out.assert_pass("cpuid");
    let hex = |key: &str| {
        let text = out
            .probe_value("cpuid", key)
            .unwrap_or_else(|| panic!("no {key} in {}", out.stdout));
        u64::from_str_radix(&text, 16).unwrap_or_else(|e| panic!("{key}={text}: {e}"))
    };
    (
        hex("leaf1_ecx"),
        hex("leaf1_edx"),
        hex("leaf7_ebx"),
        hex("misc_enable"),
    )
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
