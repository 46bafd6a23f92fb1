//! Host block devices (LVM logical volumes, loop devices, disks): size from `BLKGETSIZE64`,
//! logical block size from `BLKSSZGET`, discard by `BLKDISCARD`, write-zeroes by `BLKZEROOUT`,
//! flush by `fdatasync`. O_DIRECT by default: the host page cache would only double-cache what
//! the guest already caches.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

use super::raw::{engine_for, open_with, RawDisk, RawKind, RawOptions};
use super::{DiskError, DiskInfo};

ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);
ioctl_io_nr!(BLKSSZGET, 0x12, 104);
ioctl_io_nr!(BLKDISCARD, 0x12, 119);
ioctl_io_nr!(BLKZEROOUT, 0x12, 127);

/// Opens a block device. `opts.direct` is normally true for devices (see `open_disk`).
pub fn open_block_device(path: &Path, opts: &RawOptions) -> io::Result<RawDisk> {
    let file = open_with(path, opts.read_only, 0)?;
    let direct = if opts.direct {
        Some(open_with(path, opts.read_only, libc::O_DIRECT)?)
    } else {
        None
    };
    let lbs = logical_block_size(&file)?;
    let size = device_size(&file)?;
    let discard = !opts.read_only && discard_supported(&file);
    let info = DiskInfo {
        size_bytes: size - size % u64::from(lbs),
        logical_block_size: lbs,
        read_only: opts.read_only,
        discard,
        // BLKZEROOUT works on every device: the kernel writes zeroes when the device has no
        // faster way.
        write_zeroes: !opts.read_only,
    };
    Ok(RawDisk {
        path: path.to_path_buf(),
        kind: RawKind::BlockDevice,
        file,
        direct,
        direct_align: u64::from(lbs),
        info,
        engine: engine_for(opts)?,
    })
}

/// Device size in bytes.
pub(crate) fn device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for that.
    let rc = unsafe { ioctl_with_mut_ref(file, BLKGETSIZE64(), &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn logical_block_size(file: &File) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for that.
    let rc = unsafe { ioctl_with_mut_ref(file, BLKSSZGET(), &mut lbs) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    match u32::try_from(lbs) {
        Ok(v) if v >= 512 && v.is_power_of_two() => Ok(v),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unusable logical block size {lbs}"),
        )),
    }
}

/// Whether the device's queue accepts discards (`discard_max_bytes` > 0 in sysfs; for a
/// partition the queue directory is its parent disk's).
fn discard_supported(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/block/{major}:{minor}");
    [
        format!("{base}/queue/discard_max_bytes"),
        format!("{base}/../queue/discard_max_bytes"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok())
    .is_some_and(|v| v > 0)
}

/// BLKDISCARD (`discard`) or BLKZEROOUT over `[offset, offset + len)`.
pub(crate) fn range_ioctl(
    file: &File,
    discard: bool,
    offset: u64,
    len: u64,
) -> Result<u32, DiskError> {
    let range: [u64; 2] = [offset, len];
    let req = if discard { BLKDISCARD() } else { BLKZEROOUT() };
    // SAFETY: both ioctls read two u64 values (start, length) through the pointer.
    let rc = unsafe { ioctl_with_ref(file, req, &range) };
    if rc == 0 {
        return Ok(0);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Err(DiskError::Unsupported),
        _ => {
            log::warn!(
                "block device {} failed: {err}",
                if discard { "discard" } else { "zeroout" }
            );
            Err(DiskError::Io)
        }
    }
}
