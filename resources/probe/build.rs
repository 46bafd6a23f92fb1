//! Build script of the probe guest.
//!
//! The crate is built twice:
//! - for the host (`cargo build -p ferry-probe`, `cargo test`): the library is compiled for unit
//!   tests, and this script runs a *nested* `cargo build` of the same package for
//!   `x86_64-unknown-none` with the `kernel` feature, then copies the resulting ELF to
//!   `target/<profile>/probe`, where ferry's tests and users find it;
//! - for `x86_64-unknown-none` (the nested build): it only hands the linker script to the `probe`
//!   binary, so there is no recursion.
//!
//! The probe is always built optimized: its ring-0 code runs in KVM's instruction emulator on PVM
//! hosts, where every instruction costs microseconds.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/target_setup.rs"]
mod target_setup;

const KERNEL_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let linker_script = manifest_dir.join("link.ld");
    let target = env::var("TARGET").unwrap_or_default();

    if target == KERNEL_TARGET {
        println!("cargo:rerun-if-changed={}", linker_script.display());
        println!("cargo:rustc-link-arg-bins=-T{}", linker_script.display());
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
        return;
    }

    for path in ["src", "build.rs", "link.ld", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(path).display()
        );
    }
    // Docs.rs-style or offline tooling can skip the nested build explicitly.
    println!("cargo:rerun-if-env-changed=FERRY_PROBE_SKIP_KERNEL");
    if env::var_os("FERRY_PROBE_SKIP_KERNEL").is_some() {
        return;
    }

    ensure_kernel_target();

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg-hash>/out (or <target>/<triple>/<profile>/...).
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the layout <profile dir>/build/<pkg>/out")
        .to_path_buf();
    let target_root = find_target_root(&profile_dir);
    let nested_dir = target_root.join("probe-build");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest_dir)
        .args([
            "build",
            "--quiet",
            "--release",
            "--bin",
            "probe",
            "--features",
            "kernel",
        ])
        .args(["--target", KERNEL_TARGET])
        .arg("--target-dir")
        .arg(&nested_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_FEATURE_KERNEL",
    ] {
        cmd.env_remove(var);
    }
    // A static (non-PIE) executable at a fixed address; no debug info (keeps the image small).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Crelocation-model=static")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");

    let output = cmd
        .output()
        .expect("failed to spawn the nested cargo build of the probe");
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!("nested build of the probe kernel (--target {KERNEL_TARGET}) failed");
    }
    let built = nested_dir.join(KERNEL_TARGET).join("release").join("probe");
    let dest = profile_dir.join("probe");
    // Copy through a temporary name so a concurrent reader never sees a half-written file.
    let tmp = profile_dir.join(".probe.tmp");
    fs::copy(&built, &tmp)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", built.display(), tmp.display()));
    fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
}

/// Adds `x86_64-unknown-none` to the toolchain building us when it is missing (rustup ignores
/// `rust-toolchain.toml`'s target list for a toolchain that is already installed). When that is
/// impossible, stops with one line that says what to run.
fn ensure_kernel_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = match Command::new(&rustc).args(["--print", "sysroot"]).output() {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        // Without a sysroot we cannot tell; the nested build reports any real problem.
        _ => return,
    };
    let Some(command) = target_setup::install_command(&sysroot, KERNEL_TARGET) else {
        return;
    };
    let shown = command.join(" ");
    println!("cargo:warning=the probe guest needs the {KERNEL_TARGET} target; running `{shown}`");
    let added = Command::new(&command[0])
        .args(&command[1..])
        // rustup's proxy variables from the outer cargo would pin the wrong toolchain otherwise.
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !added || !target_setup::target_installed(&sysroot, KERNEL_TARGET) {
        eprintln!("error: the probe guest needs the {KERNEL_TARGET} target and adding it failed; run: {shown}");
        std::process::exit(1);
    }
}

/// The directory that holds `<profile>/`: either `target/` itself or `target/<triple>/` when the
/// outer build used `--target`; nested artifacts go to the outermost `target/`.
fn find_target_root(profile_dir: &Path) -> PathBuf {
    let parent = profile_dir.parent().unwrap_or(profile_dir);
    if parent.join("CACHEDIR.TAG").exists() {
        return parent.to_path_buf();
    }
    match parent.parent() {
        Some(grand) if grand.join("CACHEDIR.TAG").exists() => grand.to_path_buf(),
        _ => parent.to_path_buf(),
    }
}
