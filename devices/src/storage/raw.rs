//! [`RawDisk`]: the [`DiskBackend`] for raw images, shared by regular files ([`super::file`]) and
//! block devices ([`super::block_device`]), which differ only in how size, block size, discard
//! and write-zeroes are done.
//!
//! O_DIRECT: when enabled, a second descriptor without O_DIRECT is kept, and every request whose
//! offset, buffer addresses or lengths are not aligned for direct I/O goes through it instead of
//! failing with EINVAL. The kernel keeps the two coherent (a direct read writes back cached dirty
//! pages of its range first; a direct write invalidates them), and `fdatasync` on either
//! descriptor flushes both paths.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use super::uring::{Engine, EngineKind, FallocMode};
use super::{Completion, DiskBackend, DiskError, DiskInfo, DiskOp, DiskRequest, SubmitError};

/// Default number of requests in flight per disk.
pub const DEFAULT_QUEUE_DEPTH: usize = 128;

/// How to open a local disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOptions {
    pub read_only: bool,
    /// Use O_DIRECT (bypass the host page cache) where requests are aligned for it.
    pub direct: bool,
    pub engine: EngineKind,
    pub queue_depth: usize,
}

impl Default for RawOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            direct: false,
            engine: EngineKind::Auto,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// What kind of object backs the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    File,
    BlockDevice,
}

/// A raw disk image: regular file or block device.
pub struct RawDisk {
    pub(crate) path: PathBuf,
    pub(crate) kind: RawKind,
    /// Buffered descriptor: unaligned I/O, flush, discard, size queries.
    pub(crate) file: File,
    /// O_DIRECT descriptor, when direct I/O is on.
    pub(crate) direct: Option<File>,
    /// Alignment direct I/O needs for offsets, lengths and buffer addresses.
    pub(crate) direct_align: u64,
    pub(crate) info: DiskInfo,
    pub(crate) engine: Engine,
}

impl RawDisk {
    /// The backing path (for logs and the API).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn kind(&self) -> RawKind {
        self.kind
    }

    /// True when requests go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.engine.is_uring()
    }

    /// True when O_DIRECT is in use for aligned requests.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The descriptor for a read/write: the O_DIRECT one when everything is aligned for it.
    fn rw_fd(&self, req: &DiskRequest<'_>) -> RawFd {
        if let Some(direct) = &self.direct {
            let a = self.direct_align;
            let aligned = req.offset.is_multiple_of(a)
                && req.bufs.iter().all(|b| {
                    (b.ptr as u64).is_multiple_of(a) && u64::from(b.len).is_multiple_of(a)
                });
            if aligned {
                return direct.as_raw_fd();
            }
        }
        self.file.as_raw_fd()
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.info.size_bytes)
    }
}

impl DiskBackend for RawDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn refresh(&mut self) -> io::Result<DiskInfo> {
        let size = match self.kind {
            RawKind::File => super::file::file_size(&self.file)?,
            RawKind::BlockDevice => super::block_device::device_size(&self.file)?,
        };
        let lbs = u64::from(self.info.logical_block_size);
        self.info.size_bytes = size - size % lbs;
        Ok(self.info)
    }

    fn queue_depth(&self) -> usize {
        self.engine.depth()
    }

    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        // The device validates requests; these checks keep the backend safe on its own.
        let writes = !matches!(req.op, DiskOp::Read | DiskOp::Flush);
        if writes && self.info.read_only {
            return self
                .engine
                .complete_now(req.tag, Err(DiskError::Unsupported));
        }
        if req.op != DiskOp::Flush && !self.in_range(req.offset, req.len) {
            return self.engine.complete_now(req.tag, Err(DiskError::Io));
        }
        match req.op {
            DiskOp::Read | DiskOp::Write => {
                let fd = self.rw_fd(req);
                self.engine
                    .submit_rw(req.tag, fd, req.op == DiskOp::Write, req.offset, req.bufs)
            }
            DiskOp::Flush => self.engine.submit_fsync(req.tag, self.file.as_raw_fd()),
            DiskOp::Discard if !self.info.discard => self
                .engine
                .complete_now(req.tag, Err(DiskError::Unsupported)),
            DiskOp::WriteZeroes if !self.info.write_zeroes => self
                .engine
                .complete_now(req.tag, Err(DiskError::Unsupported)),
            DiskOp::Discard | DiskOp::WriteZeroes => match self.kind {
                RawKind::File => {
                    let mode = if req.op == DiskOp::Discard {
                        FallocMode::PunchHole
                    } else {
                        FallocMode::ZeroRange
                    };
                    self.engine.submit_fallocate(
                        req.tag,
                        self.file.as_raw_fd(),
                        mode,
                        req.offset,
                        req.len,
                    )
                }
                RawKind::BlockDevice => {
                    // No io_uring opcode for these on the kernels we target: the ioctls are
                    // quick for devices that support them, and rare.
                    let result = super::block_device::range_ioctl(
                        &self.file,
                        req.op == DiskOp::Discard,
                        req.offset,
                        req.len,
                    );
                    self.engine.complete_now(req.tag, result)
                }
            },
        }
    }

    fn kick(&mut self) -> io::Result<()> {
        self.engine.kick()
    }

    fn notifier(&self) -> Option<RawFd> {
        self.engine.notifier()
    }

    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        self.engine.poll_completions(out)
    }

    fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }
}

/// Opens `path` read-only or read-write, with extra open flags.
pub(crate) fn open_with(path: &std::path::Path, read_only: bool, flags: i32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags | libc::O_CLOEXEC)
        .open(path)
}

pub(crate) fn engine_for(opts: &RawOptions) -> io::Result<Engine> {
    Engine::new(opts.queue_depth.max(1), opts.engine)
}

#[cfg(test)]
#[path = "raw_tests.rs"]
pub(crate) mod tests;
