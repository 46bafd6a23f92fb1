//! Decides whether the active toolchain can build the probe guest, and what to run when it cannot.
//!
//! `rust-toolchain.toml` lists `x86_64-unknown-none`, but rustup only honours that list when it
//! installs a toolchain: a user who already has the pinned toolchain (without that target) gets
//! `can't find crate for core` from the probe's nested build. `build.rs` asks [`install_command`]
//! before that build and runs the command it returns. Kept free of I/O beyond a directory listing
//! so tests can drive it with a fake sysroot.

use std::path::{Path, PathBuf};

/// Directory of a target's precompiled standard library inside a toolchain's sysroot.
pub fn target_libdir(sysroot: &Path, target: &str) -> PathBuf {
    sysroot.join("lib").join("rustlib").join(target).join("lib")
}

/// True when the sysroot holds `core` for `target` (`libcore-<hash>.rlib`), the crate whose
/// absence breaks the build.
pub fn target_installed(sysroot: &Path, target: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(target_libdir(sysroot, target)) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libcore-") && name.ends_with(".rlib")
    })
}

/// The rustup toolchain name of a sysroot such as `~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu`,
/// or `None` for a sysroot rustup does not manage (a distribution's or a custom-built rustc).
pub fn rustup_toolchain_name(sysroot: &Path) -> Option<String> {
    let parent = sysroot.parent()?;
    if parent.file_name()? != "toolchains" {
        return None;
    }
    Some(sysroot.file_name()?.to_str()?.to_owned())
}

/// The command that adds `target` to the toolchain at `sysroot`, or `None` when it is there.
/// Names the toolchain explicitly so the target lands in the toolchain cargo is using, whatever
/// rustup's default is.
pub fn install_command(sysroot: &Path, target: &str) -> Option<Vec<String>> {
    if target_installed(sysroot, target) {
        return None;
    }
    let mut command = vec!["rustup".to_owned(), "target".to_owned(), "add".to_owned()];
    if let Some(toolchain) = rustup_toolchain_name(sysroot) {
        command.push("--toolchain".to_owned());
        command.push(toolchain);
    }
    command.push(target.to_owned());
    Some(command)
}
