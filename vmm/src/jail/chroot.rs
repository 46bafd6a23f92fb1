//! Entering the jail: a private mount namespace whose root is the jail directory, with the host's
//! root unmounted, so no host path resolves from inside, whatever the VMM later opens.
//!
//! `pivot_root` rather than a bare `chroot`: a chrooted root process can walk out of a chroot,
//! and the old root would stay mounted in the namespace; after `pivot_root` and the detach of the
//! old root there is nothing left to reach.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::JailError;

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage(format!("{}: contains a NUL byte", path.display())))
}

fn check(what: &str, rc: libc::c_int) -> Result<(), JailError> {
    if rc < 0 {
        Err(JailError::io(what.to_string(), io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Moves this process into a new mount namespace rooted at `jail` (which must exist): the
/// namespace's mounts are made private (nothing propagates back to the host), the jail is bind
/// mounted onto itself (`pivot_root` needs a mount point), the root is pivoted and the old root
/// detached and removed.
pub fn enter(jail: &Path) -> Result<(), JailError> {
    let jail_c = cstring(jail)?;
    // SAFETY: plain syscalls on valid NUL-terminated strings; null pointers where the kernel
    // accepts them (no source, no fs type, no data).
    unsafe {
        check("unshare(CLONE_NEWNS)", libc::unshare(libc::CLONE_NEWNS))?;
        check(
            "making / a private mount",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_PRIVATE | libc::MS_REC,
                std::ptr::null(),
            ),
        )?;
        check(
            &format!("bind-mounting {} onto itself", jail.display()),
            libc::mount(
                jail_c.as_ptr(),
                jail_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
        )?;
        check(
            &format!("chdir {}", jail.display()),
            libc::chdir(jail_c.as_ptr()),
        )?;
        let old = c"old_root";
        if libc::mkdir(old.as_ptr(), 0o700) < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(JailError::io("mkdir old_root in the jail".into(), err));
            }
        }
        check(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old.as_ptr()) as libc::c_int,
        )?;
        check("chdir /", libc::chdir(c"/".as_ptr()))?;
        check(
            "unmounting the old root",
            libc::umount2(old.as_ptr(), libc::MNT_DETACH),
        )?;
        check("removing old_root", libc::rmdir(old.as_ptr()))?;
        check("chroot .", libc::chroot(c".".as_ptr()))?;
    }
    Ok(())
}
