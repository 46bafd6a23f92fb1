//! [`open_disk`]: turns a disk path from the VM configuration into a backend.
//!
//! * `iscsi://...` URLs go to the iSCSI initiator.
//! * A regular file is a raw image ([`super::file`]); O_DIRECT off unless asked for.
//! * A block device ([`super::block_device`]); O_DIRECT on unless asked otherwise.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::raw::{RawOptions, DEFAULT_QUEUE_DEPTH};
use super::uring::EngineKind;
use super::DiskBackend;

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("disk {0}: no such file or device")]
    NotFound(PathBuf),
    #[error("disk {0}: permission denied")]
    PermissionDenied(PathBuf),
    #[error("disk {path}: is a {kind}, not a regular file or block device")]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error("disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("iSCSI disk {url}: {reason}")]
    Iscsi { url: String, reason: String },
}

/// Everything [`open_disk_with`] accepts.
#[derive(Clone, Debug, Default)]
pub struct DiskOptions {
    pub read_only: bool,
    /// O_DIRECT: `None` picks the default (on for block devices, off for files).
    pub direct: Option<bool>,
    pub engine: EngineKind,
    /// Requests in flight; 0 means the default.
    pub queue_depth: usize,
    /// File holding the CHAP secret for `iscsi://` disks.
    pub chap_secret_file: Option<PathBuf>,
}

/// Opens a disk with default engine and queue depth.
pub fn open_disk(
    path: impl AsRef<Path>,
    read_only: bool,
    direct: Option<bool>,
) -> Result<Box<dyn DiskBackend>, OpenError> {
    open_disk_with(
        path,
        &DiskOptions {
            read_only,
            direct,
            ..DiskOptions::default()
        },
    )
}

/// Opens a disk: an `iscsi://` URL, a regular file or a block device.
pub fn open_disk_with(
    path: impl AsRef<Path>,
    opts: &DiskOptions,
) -> Result<Box<dyn DiskBackend>, OpenError> {
    let path = path.as_ref();
    if let Some(url) = path.to_str().filter(|s| s.starts_with("iscsi://")) {
        return open_iscsi(url, opts);
    }
    let meta = std::fs::metadata(path).map_err(|e| map_io(path, e))?;
    let ft = meta.file_type();
    let is_block = ft.is_block_device();
    if !is_block && !ft.is_file() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(OpenError::NotADisk {
            path: path.to_path_buf(),
            kind,
        });
    }
    let raw = RawOptions {
        read_only: opts.read_only,
        direct: opts.direct.unwrap_or(is_block),
        engine: opts.engine,
        queue_depth: if opts.queue_depth == 0 {
            DEFAULT_QUEUE_DEPTH
        } else {
            opts.queue_depth
        },
    };
    let disk = if is_block {
        super::block_device::open_block_device(path, &raw)
    } else {
        super::file::open_file(path, &raw)
    };
    disk.map(|d| Box::new(d) as Box<dyn DiskBackend>)
        .map_err(|e| map_io(path, e))
}

fn open_iscsi(url: &str, opts: &DiskOptions) -> Result<Box<dyn DiskBackend>, OpenError> {
    super::iscsi::open_iscsi(url, opts.chap_secret_file.as_deref(), opts.read_only).map_err(|e| {
        OpenError::Iscsi {
            url: url.to_string(),
            reason: e.to_string(),
        }
    })
}

fn map_io(path: &Path, e: io::Error) -> OpenError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => OpenError::NotFound(path),
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied(path),
        _ if e.raw_os_error() == Some(libc::EROFS) => OpenError::PermissionDenied(path),
        _ => OpenError::Io { path, source: e },
    }
}
