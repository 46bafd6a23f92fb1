//! The build script's decision "is the probe's target installed, and if not, what to run", on
//! fake sysroots.

#[path = "../build/target_setup.rs"]
mod target_setup;

use std::fs;
use std::path::PathBuf;

use target_setup::{install_command, rustup_toolchain_name, target_installed, target_libdir};

const TARGET: &str = "x86_64-unknown-none";

/// A scratch directory laid out like `~/.rustup/toolchains/<name>`, removed on drop.
struct FakeRustup {
    root: PathBuf,
}

impl FakeRustup {
    fn new(tag: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("ferry-target-setup-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("toolchains")).expect("scratch dir");
        FakeRustup { root }
    }

    fn toolchain(&self, name: &str) -> PathBuf {
        let sysroot = self.root.join("toolchains").join(name);
        fs::create_dir_all(target_libdir(&sysroot, "x86_64-unknown-linux-gnu")).expect("host lib");
        sysroot
    }
}

impl Drop for FakeRustup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn missing_target_asks_rustup_to_add_it_to_the_same_toolchain() {
    let rustup = FakeRustup::new("missing");
    let sysroot = rustup.toolchain("1.95.0-x86_64-unknown-linux-gnu");
    assert!(!target_installed(&sysroot, TARGET));
    assert_eq!(
        install_command(&sysroot, TARGET),
        Some(
            [
                "rustup",
                "target",
                "add",
                "--toolchain",
                "1.95.0-x86_64-unknown-linux-gnu",
                TARGET
            ]
            .map(String::from)
            .to_vec()
        )
    );
}

#[test]
fn installed_target_needs_nothing() {
    let rustup = FakeRustup::new("present");
    let sysroot = rustup.toolchain("1.95.0-x86_64-unknown-linux-gnu");
    let libdir = target_libdir(&sysroot, TARGET);
    fs::create_dir_all(&libdir).expect("target lib dir");
    fs::write(libdir.join("libcore-0123abcd.rlib"), b"").expect("fake core");
    assert!(target_installed(&sysroot, TARGET));
    assert_eq!(install_command(&sysroot, TARGET), None);
}

#[test]
fn an_empty_target_directory_is_still_missing() {
    // What a half-finished or removed install leaves behind: the directory without `core`.
    let rustup = FakeRustup::new("empty");
    let sysroot = rustup.toolchain("stable-x86_64-unknown-linux-gnu");
    let libdir = target_libdir(&sysroot, TARGET);
    fs::create_dir_all(&libdir).expect("target lib dir");
    fs::write(libdir.join("libcompiler_builtins-1.rlib"), b"").expect("other crate");
    assert!(install_command(&sysroot, TARGET).is_some());
}

#[test]
fn sysroot_outside_rustup_gets_the_plain_command() {
    assert_eq!(rustup_toolchain_name(&PathBuf::from("/usr")), None);
    let dir =
        std::env::temp_dir().join(format!("ferry-target-setup-distro-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    assert_eq!(
        install_command(&dir, TARGET),
        Some(
            ["rustup", "target", "add", TARGET]
                .map(String::from)
                .to_vec()
        )
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_real_toolchain_building_this_test_has_the_target() {
    // The test binary exists, so build.rs already ran: it must have left the target installed.
    let out = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        target_installed(&sysroot, TARGET),
        "no {TARGET} core in {}",
        sysroot.display()
    );
}
