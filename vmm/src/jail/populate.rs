//! What the jail holds, created from inside it (after `pivot_root`), so that a link planted in
//! the jail by an earlier VMM run resolves inside the jail, never to a host file: the
//! directories the VMM writes to, its own binary and libraries (copied from files opened on the
//! host before the pivot), and the device nodes it opens.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::JailError;

/// Directories owned by the VMM's user (Firecracker's set): `/` (the API socket may go there),
/// `/dev`, `/dev/net` and `/run`.
const OWNED_DIRS: &[&str] = &["/", "/dev", "/dev/net", "/run"];

/// A character or block device node to recreate inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub block: bool,
    pub rdev: u64,
}

/// The devices every VMM gets: KVM, the tun clone device (taps), and `/dev/urandom` (optional,
/// as in Firecracker: a host without it only loses what reads it).
pub fn standard_devices() -> Vec<(DeviceNode, bool)> {
    let node = |path: &str, major, minor| DeviceNode {
        path: PathBuf::from(path),
        block: false,
        rdev: libc::makedev(major, minor),
    };
    vec![
        (node("/dev/kvm", 10, 232), true),
        (node("/dev/net/tun", 10, 200), true),
        (node("/dev/urandom", 1, 9), false),
    ]
}

/// The host node at `path` (a `--dev`), read before the pivot.
pub fn host_device(path: &Path) -> Result<DeviceNode, JailError> {
    let meta =
        fs::metadata(path).map_err(|e| JailError::io(format!("--dev {}", path.display()), e))?;
    let kind = meta.file_type();
    if !kind.is_char_device() && !kind.is_block_device() {
        return Err(JailError::Usage(format!(
            "--dev {}: not a character or block device",
            path.display()
        )));
    }
    Ok(DeviceNode {
        path: path.to_path_buf(),
        block: kind.is_block_device(),
        rdev: meta.rdev(),
    })
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage(format!("{}: contains a NUL byte", path.display())))
}

/// `lchown`: never follows a link.
fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let c = cstring(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } < 0 {
        return Err(JailError::io(
            format!("chown {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Creates `/dev`, `/dev/net`, `/run` (mode 0700) and hands them and `/` to `uid:gid`.
pub fn owned_dirs(uid: u32, gid: u32) -> Result<(), JailError> {
    for dir in OWNED_DIRS {
        let path = Path::new(dir);
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(JailError::io(format!("mkdir {dir}"), e)),
        }
        let meta =
            fs::symlink_metadata(path).map_err(|e| JailError::io(format!("stat {dir}"), e))?;
        if !meta.is_dir() {
            return Err(JailError::Jail(format!(
                "{dir} in the jail is not a directory"
            )));
        }
        chown(path, uid, gid)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| JailError::io(format!("chmod {dir}"), e))?;
    }
    Ok(())
}

/// Removes whatever sits at `path` (a node or file left by an earlier run) so a fresh one is
/// created; a directory there is an error.
fn clear(path: &Path) -> Result<(), JailError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JailError::io(format!("removing {}", path.display()), e)),
    }
}

/// Creates the node at its path inside the jail (parents 0755, root's), owned by `uid:gid`,
/// mode 0600.
pub fn make_node(node: &DeviceNode, uid: u32, gid: u32) -> Result<(), JailError> {
    if let Some(parent) = node.path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| JailError::io(format!("mkdir {}", parent.display()), e))?;
    }
    clear(&node.path)?;
    let c = cstring(&node.path)?;
    let kind = if node.block {
        libc::S_IFBLK
    } else {
        libc::S_IFCHR
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, node.rdev) } < 0 {
        return Err(JailError::io(
            format!("mknod {}", node.path.display()),
            io::Error::last_os_error(),
        ));
    }
    chown(&node.path, uid, gid)
}

/// Copies `source` (opened on the host) to `dest` inside the jail: a new root-owned file (mode
/// 0755), never through a link left at `dest`.
pub fn copy_in(source: &mut File, dest: &Path) -> Result<(), JailError> {
    if let Some(parent) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| JailError::io(format!("mkdir {}", parent.display()), e))?;
    }
    clear(dest)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| JailError::io(format!("creating {}", dest.display()), e))?;
    io::copy(source, &mut out)
        .map_err(|e| JailError::io(format!("copying to {}", dest.display()), e))?;
    Ok(())
}

/// Writes `<exec name>.pid` at the jail's root: the VMM's PID as the host sees it, for
/// `--daemonize` and `--new-pid-ns`, where it differs from the jailer's.
pub fn write_pid_file(exec_name: &str, pid: i32) -> Result<(), JailError> {
    let path = PathBuf::from(format!("/{exec_name}.pid"));
    clear(&path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| JailError::io(format!("creating {}", path.display()), e))?;
    io::Write::write_all(&mut file, pid.to_string().as_bytes())
        .map_err(|e| JailError::io(format!("writing {}", path.display()), e))
}
