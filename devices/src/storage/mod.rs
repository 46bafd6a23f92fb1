//! Disk backends behind virtio-blk: regular files, block devices (LVM logical volumes) and iSCSI LUNs.
//!
//! A backend is asynchronous by contract: the device submits requests tagged by the device, then
//! collects completions when the backend's [`DiskBackend::notifier`] fd becomes readable (an
//! io_uring completion eventfd, an eventfd written by the iSCSI session thread). A synchronous
//! backend simply completes inside `submit` and reports no notifier; the device polls it right after
//! submitting. Buffers are host pointers into guest memory, which stays mapped for the VM's life.
//!
//! Hot-path rule: `submit` and `poll_completions` must not allocate or take a contended lock per
//! request. Backends keep fixed-size request slots sized by [`DiskBackend::queue_depth`].

use std::io;
use std::os::fd::RawFd;

pub mod iscsi;

/// What a backend can do, as the guest will be told through virtio-blk config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Capacity in bytes (a multiple of `logical_block_size`).
    pub size_bytes: u64,
    /// The backend's logical block size (512 or 4096 typically). Offsets and lengths of requests
    /// are multiples of it.
    pub logical_block_size: u32,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Supports [`DiskOp::Discard`].
    pub discard: bool,
    /// Supports [`DiskOp::WriteZeroes`].
    pub write_zeroes: bool,
}

/// One I/O operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Read `len` bytes at `offset` into the request's buffers.
    Read,
    /// Write the request's buffers at `offset`.
    Write,
    /// Make every completed write durable.
    Flush,
    /// Deallocate `[offset, offset + len)`; later reads may return zeroes or old data.
    Discard,
    /// Make `[offset, offset + len)` read back as zeroes.
    WriteZeroes,
}

/// A buffer in guest memory, already translated to a host address and bounds-checked by the device.
#[derive(Clone, Copy, Debug)]
pub struct GuestBuf {
    pub ptr: *mut u8,
    pub len: u32,
}

// SAFETY: a GuestBuf points into guest memory, which is a shared mapping valid for the VM's whole
// lifetime and accessed concurrently by the guest anyway; moving the pointer between threads is
// no less safe than the guest's own use of that memory.
unsafe impl Send for GuestBuf {}

/// A request as submitted by the device.
#[derive(Debug)]
pub struct DiskRequest<'a> {
    /// Opaque device tag, returned in the completion.
    pub tag: u64,
    pub op: DiskOp,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Byte length for Discard/WriteZeroes; for Read/Write the sum of `bufs` lengths.
    pub len: u64,
    /// Data buffers for Read/Write; empty otherwise.
    pub bufs: &'a [GuestBuf],
}

/// How a request failed, mapped by the device onto virtio-blk status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The backend cannot do this operation (VIRTIO_BLK_S_UNSUPP).
    Unsupported,
    /// The I/O failed, or the backend gave up on it (VIRTIO_BLK_S_IOERR).
    Io,
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub tag: u64,
    /// Bytes transferred (for reads: written into guest memory) or the error.
    pub result: Result<u32, DiskError>,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// All request slots are in use: keep the request and retry after the next completion.
    #[error("backend queue is full")]
    Busy,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A disk backend.
pub trait DiskBackend: Send {
    /// Current capabilities and size.
    fn info(&self) -> DiskInfo;

    /// Re-reads the size from the underlying storage (an LV was extended, a file enlarged, a LUN
    /// resized) and returns the new info.
    fn refresh(&mut self) -> io::Result<DiskInfo>;

    /// How many requests may be in flight at once.
    fn queue_depth(&self) -> usize;

    /// Queues a request. It may not be started until [`DiskBackend::kick`] is called, so that a
    /// batch of requests costs one syscall.
    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError>;

    /// Starts every queued request.
    fn kick(&mut self) -> io::Result<()>;

    /// An fd that is readable when completions may be available, to register with the event
    /// loop; `None` for backends that complete synchronously.
    fn notifier(&self) -> Option<RawFd>;

    /// Moves finished requests into `out` (which the caller reuses, so no allocation happens in
    /// steady state) and re-arms the notifier.
    fn poll_completions(&mut self, out: &mut Vec<Completion>);

    /// Number of requests submitted and not yet returned by `poll_completions`.
    fn in_flight(&self) -> usize;
}

pub mod block_device;
pub mod file;
pub mod null;
pub mod open;
pub mod raw;
pub mod uring;
