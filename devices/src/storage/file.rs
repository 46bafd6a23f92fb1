//! Raw image files: positioned I/O through the shared engine, discard by punching holes,
//! write-zeroes by `FALLOC_FL_ZERO_RANGE` (falling back to punching holes where the filesystem
//! lacks it), flush by `fdatasync`.

use std::fs::File;
use std::io;
use std::path::Path;

use super::raw::{engine_for, open_with, RawDisk, RawKind, RawOptions};
use super::DiskInfo;

/// Sector size presented for image files: 512 bytes is what every guest expects of a raw image.
const FILE_BLOCK_SIZE: u32 = 512;
/// Alignment used to decide whether a request may go through O_DIRECT. A page is safe on every
/// filesystem (their direct-I/O alignment is the underlying device's sector, at most 4 KiB);
/// smaller-aligned requests take the buffered descriptor.
const FILE_DIRECT_ALIGN: u64 = 4096;

/// Opens a raw image file. The size is rounded down to a whole number of 512-byte sectors.
pub fn open_file(path: &Path, opts: &RawOptions) -> io::Result<RawDisk> {
    let file = open_with(path, opts.read_only, 0)?;
    let direct = if opts.direct {
        Some(
            open_with(path, opts.read_only, libc::O_DIRECT).map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "the filesystem of {} does not support O_DIRECT",
                            path.display()
                        ),
                    )
                } else {
                    e
                }
            })?,
        )
    } else {
        None
    };
    let size = file_size(&file)?;
    let info = DiskInfo {
        size_bytes: size - size % u64::from(FILE_BLOCK_SIZE),
        logical_block_size: FILE_BLOCK_SIZE,
        read_only: opts.read_only,
        discard: !opts.read_only,
        write_zeroes: !opts.read_only,
    };
    Ok(RawDisk {
        path: path.to_path_buf(),
        kind: RawKind::File,
        file,
        direct,
        direct_align: FILE_DIRECT_ALIGN,
        info,
        engine: engine_for(opts)?,
    })
}

pub(crate) fn file_size(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}
