//! `macvtap=NAME`: a macvtap interface through its character device `/dev/tap<ifindex>`.
//!
//! A macvtap sits on a lower device (a NIC, a veth) and hands ferry the frames addressed to its
//! own MAC, without a bridge in the path. That is also its one rule: **the guest must use the
//! macvtap's MAC**, since frames for any other unicast address never reach the macvtap. The
//! guest MAC therefore defaults to the macvtap's, and a different `mac=` is refused.
//!
//! Without udev nobody creates `/dev/tap<ifindex>`; ferry creates it from the major:minor in
//! `/sys/class/net/NAME/macvtap/tap<ifindex>/dev`. ifindexes are per network namespace but
//! `/dev` is shared, so an existing node may belong to another namespace's macvtap: its device
//! number is checked, and on a mismatch ferry opens a private node it deletes right away.
//! Each open of the node is one queue (multiqueue).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{open_error, setup_queue_fd, sysfs_dir, MacAddr, NetError};

/// The macvtap's own MAC, or `None` when `name` is not a macvtap here.
pub fn own_mac(name: &str) -> Option<MacAddr> {
    let dir = sysfs_dir(name).ok()?;
    if !dir.join("macvtap").exists() {
        return None;
    }
    read_trimmed(&dir.join("address")).ok()?.parse().ok()
}

/// Opens `queues` queues of macvtap `name`; returns them and the macvtap's MAC.
pub fn open(name: &str, queues: u16) -> Result<(Vec<OwnedFd>, MacAddr), NetError> {
    let dir = sysfs_dir(name)?;
    if !dir.exists() {
        return Err(NetError::NoSuchInterface(name.to_string()));
    }
    if !dir.join("macvtap").exists() {
        return Err(NetError::NotMacvtap(name.to_string()));
    }
    let sysfs = |what: &'static str, source| NetError::Setup {
        what,
        name: name.to_string(),
        source,
    };
    let ifindex: u32 = read_trimmed(&dir.join("ifindex"))
        .map_err(|e| sysfs("reading ifindex", e))?
        .parse()
        .map_err(|_| sysfs("parsing ifindex", std::io::ErrorKind::InvalidData.into()))?;
    let mac: MacAddr = read_trimmed(&dir.join("address"))
        .map_err(|e| sysfs("reading the MAC", e))?
        .parse()
        .map_err(|_| sysfs("parsing the MAC", std::io::ErrorKind::InvalidData.into()))?;
    let dev_text = read_trimmed(&dir.join(format!("macvtap/tap{ifindex}/dev")))
        .map_err(|e| sysfs("reading the char device number", e))?;
    let rdev = parse_dev(&dev_text).ok_or_else(|| {
        sysfs(
            "parsing the char device number",
            std::io::ErrorKind::InvalidData.into(),
        )
    })?;

    let node = Node::get(ifindex, rdev).map_err(|e| sysfs("creating the /dev node", e))?;
    let mut fds = Vec::with_capacity(usize::from(queues));
    for _ in 0..queues {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&node.path)
            .map_err(|e| match e.raw_os_error() {
                // The macvtap has no room for another queue.
                Some(libc::EBUSY) if !fds.is_empty() => NetError::Queues {
                    queues,
                    reason: format!("macvtap {name} refused queue {}", fds.len() + 1),
                },
                _ => open_error(&node.path, e),
            })?;
        let fd = OwnedFd::from(file);
        setup_queue_fd(fd.as_raw_fd(), name)?;
        fds.push(fd);
    }
    Ok((fds, mac))
}

/// The device node ferry opens; a private one is deleted when dropped.
struct Node {
    path: PathBuf,
    private: bool,
}

impl Node {
    fn get(ifindex: u32, rdev: libc::dev_t) -> std::io::Result<Self> {
        let path = PathBuf::from(format!("/dev/tap{ifindex}"));
        for _ in 0..2 {
            match std::fs::metadata(&path) {
                Ok(m) if m.file_type().is_char_device() && m.rdev() == rdev => {
                    return Ok(Self {
                        path,
                        private: false,
                    })
                }
                // Another namespace's macvtap (or something else): never touch it.
                Ok(_) => break,
                Err(_) => match mknod(&path, rdev) {
                    Ok(()) => {
                        return Ok(Self {
                            path,
                            private: false,
                        })
                    }
                    // Created concurrently by someone else: look again.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        let major = libc::major(rdev);
        let minor = libc::minor(rdev);
        let path = PathBuf::from(format!(
            "/dev/ferry-tap{major}-{minor}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        mknod(&path, rdev)?;
        Ok(Self {
            path,
            private: true,
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.private {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn mknod(path: &Path, rdev: libc::dev_t) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated path; mknod touches nothing else.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Parses sysfs's `MAJOR:MINOR`.
fn parse_dev(text: &str) -> Option<libc::dev_t> {
    let (major, minor) = text.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

fn read_trimmed(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_parse() {
        assert_eq!(parse_dev("241:3"), Some(libc::makedev(241, 3)));
        assert_eq!(parse_dev("241"), None);
        assert_eq!(parse_dev("a:b"), None);
    }
}
