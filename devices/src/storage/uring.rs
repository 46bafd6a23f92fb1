//! The I/O engine shared by the file and block-device backends.
//!
//! Two implementations behind one type:
//! * io_uring: requests become SQEs (readv, writev, fsync(DATASYNC), fallocate) that
//!   [`Engine::kick`] submits in one `io_uring_enter`; completions raise an eventfd registered
//!   with the ring, which the device watches.
//! * synchronous: used when io_uring cannot be set up (old kernel, seccomp, sysctl
//!   `io_uring_disabled`). Requests run inside `submit` (preadv/pwritev/fdatasync/fallocate) and
//!   their completions wait in a list until `poll_completions`; there is no notifier, so the
//!   device polls right after submitting.
//!
//! Both keep a fixed set of request slots, allocated once, so the hot path never allocates: a slot
//! holds the device's tag and the iovec array, which must stay valid until the kernel is done.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, DiskError, GuestBuf, SubmitError};

/// Most iovecs one readv/writev accepts (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;
/// iovecs reserved per slot up front, small to keep idle memory low; a slot that meets a longer
/// request grows once and keeps the capacity, so steady state does not allocate.
const SLOT_IOVECS: usize = 8;

/// Which engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring if the kernel allows it, else synchronous.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Always synchronous.
    Sync,
}

/// How `fallocate` changes a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocMode {
    /// Deallocate; reads return zeroes (discard).
    PunchHole,
    /// Read back as zeroes, preferably without writing data (write zeroes).
    ZeroRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotOp {
    Read,
    Write,
    Fsync,
    Falloc(FallocMode),
}

struct Slot {
    tag: u64,
    op: SlotOp,
    fd: RawFd,
    offset: u64,
    /// Expected transfer for read/write; byte length for fallocate.
    len: u64,
    iovecs: Vec<libc::iovec>,
}

/// A request engine with `depth` slots.
pub struct Engine {
    ring: Option<IoUring>,
    eventfd: Option<EventFd>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots completed synchronously (with their results), returned and freed at the next
    /// `poll_completions`: they count as in flight until then, so `ready` never outgrows `depth`.
    ready: Vec<(u32, Result<u32, DiskError>)>,
    /// SQEs pushed since the last successful submit.
    unsubmitted: usize,
    /// Cleared the first time FALLOC_FL_ZERO_RANGE is refused; later requests punch holes.
    zero_range_ok: bool,
}

// SAFETY: the raw pointers in the slots' iovecs point into guest memory, a shared mapping that
// lives as long as the VM; the engine is used by one thread at a time (it sits behind the
// device's mutex), and moving it between threads does not change what the pointers refer to.
unsafe impl Send for Engine {}

impl Engine {
    /// Creates an engine of the requested kind. `Auto` falls back to synchronous I/O, with a log
    /// line, when io_uring setup fails.
    pub fn new(depth: usize, kind: EngineKind) -> io::Result<Self> {
        match kind {
            EngineKind::Sync => Ok(Self::new_sync(depth)),
            EngineKind::Uring => Self::new_uring(depth),
            EngineKind::Auto => Self::new_uring(depth).or_else(|e| {
                log::info!("io_uring unavailable ({e}); using synchronous disk I/O");
                Ok(Self::new_sync(depth))
            }),
        }
    }

    /// A synchronous engine.
    pub fn new_sync(depth: usize) -> Self {
        Self::with_ring(depth, None, None)
    }

    /// An io_uring engine; fails when the kernel refuses io_uring.
    pub fn new_uring(depth: usize) -> io::Result<Self> {
        let entries = u32::try_from(depth.max(1))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "queue depth too large"))?;
        let ring = IoUring::new(entries)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Self::with_ring(depth, Some(ring), Some(eventfd)))
    }

    fn with_ring(depth: usize, ring: Option<IoUring>, eventfd: Option<EventFd>) -> Self {
        let depth = depth.max(1);
        let slots = (0..depth)
            .map(|_| Slot {
                tag: 0,
                op: SlotOp::Fsync,
                fd: -1,
                offset: 0,
                len: 0,
                iovecs: Vec::with_capacity(SLOT_IOVECS),
            })
            .collect();
        Self {
            ring,
            eventfd,
            slots,
            // Pop order does not matter; reversed so slot 0 is used first (nicer in traces).
            free: (0..depth as u32).rev().collect(),
            ready: Vec::with_capacity(depth),
            unsubmitted: 0,
            zero_range_ok: true,
        }
    }

    /// True when backed by io_uring.
    pub fn is_uring(&self) -> bool {
        self.ring.is_some()
    }

    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The completion eventfd (io_uring only).
    pub fn notifier(&self) -> Option<RawFd> {
        self.eventfd.as_ref().map(|e| e.as_raw_fd())
    }

    /// Queues a read (`write == false`) or write of `bufs` at `offset` on `fd`.
    pub fn submit_rw(
        &mut self,
        tag: u64,
        fd: RawFd,
        write: bool,
        offset: u64,
        bufs: &[GuestBuf],
    ) -> Result<(), SubmitError> {
        if bufs.len() > MAX_IOVECS {
            return Err(invalid("too many buffers in one request"));
        }
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total > u64::from(u32::MAX) {
            return Err(invalid("request larger than 4 GiB"));
        }
        let op = if write { SlotOp::Write } else { SlotOp::Read };
        let idx = self.take_slot(tag, op, fd, offset, total)?;
        let slot = &mut self.slots[idx as usize];
        slot.iovecs.clear();
        slot.iovecs.extend(bufs.iter().map(|b| libc::iovec {
            iov_base: b.ptr.cast(),
            iov_len: b.len as usize,
        }));
        self.start(idx)
    }

    /// Queues an fdatasync of `fd`.
    pub fn submit_fsync(&mut self, tag: u64, fd: RawFd) -> Result<(), SubmitError> {
        let idx = self.take_slot(tag, SlotOp::Fsync, fd, 0, 0)?;
        self.start(idx)
    }

    /// Queues a fallocate of `[offset, offset + len)` (always KEEP_SIZE).
    pub fn submit_fallocate(
        &mut self,
        tag: u64,
        fd: RawFd,
        mode: FallocMode,
        offset: u64,
        len: u64,
    ) -> Result<(), SubmitError> {
        let idx = self.take_slot(tag, SlotOp::Falloc(mode), fd, offset, len)?;
        self.start(idx)
    }

    /// Completes a request that the caller carried out itself (an ioctl), through the same slot
    /// accounting so queue depth and ordering of completions stay uniform.
    pub fn complete_now(
        &mut self,
        tag: u64,
        result: Result<u32, DiskError>,
    ) -> Result<(), SubmitError> {
        let idx = self.take_slot(tag, SlotOp::Fsync, -1, 0, 0)?;
        self.finish_sync(idx, result);
        if let Some(evt) = &self.eventfd {
            // Wake the event loop even though the device also polls after kicking.
            let _ = evt.write(1);
        }
        Ok(())
    }

    /// Starts every queued request (io_uring: one `io_uring_enter` for the whole batch).
    pub fn kick(&mut self) -> io::Result<()> {
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is backed up: the SQEs stay queued and go with the next
                // kick, which follows the completions that free room.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves finished requests to `out` and frees their slots.
    pub fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        if let Some(evt) = &self.eventfd {
            // Reset before draining: a completion landing after the drain re-signals it.
            let _ = evt.read();
        }
        for (idx, result) in self.ready.drain(..) {
            out.push(Completion {
                tag: self.slots[idx as usize].tag,
                result,
            });
            self.free.push(idx);
        }
        let Some(ring) = &mut self.ring else {
            return;
        };
        let mut freed = 0;
        for cqe in ring.completion() {
            let idx = cqe.user_data() as usize;
            let Some(slot) = self.slots.get(idx) else {
                log::error!("io_uring returned unknown slot {idx}");
                continue;
            };
            let result = match map_result(slot, cqe.result()) {
                // ZERO_RANGE unsupported by this filesystem: punch a hole instead, now and
                // for every later request.
                Err(DiskError::Unsupported) if slot.op == SlotOp::Falloc(FallocMode::ZeroRange) => {
                    self.zero_range_ok = false;
                    falloc_sync(slot.fd, FallocMode::PunchHole, slot.offset, slot.len)
                }
                r => r,
            };
            out.push(Completion {
                tag: slot.tag,
                result,
            });
            self.free.push(idx as u32);
            freed += 1;
        }
        if freed > 0 && self.unsubmitted > 0 {
            // Requests refused with EBUSY earlier can go now.
            if let Err(e) = self.kick() {
                log::warn!("io_uring submit after completions: {e}");
            }
        }
    }

    fn take_slot(
        &mut self,
        tag: u64,
        op: SlotOp,
        fd: RawFd,
        offset: u64,
        len: u64,
    ) -> Result<u32, SubmitError> {
        let idx = self.free.pop().ok_or(SubmitError::Busy)?;
        let slot = &mut self.slots[idx as usize];
        slot.tag = tag;
        slot.op = op;
        slot.fd = fd;
        slot.offset = offset;
        slot.len = len;
        Ok(idx)
    }

    fn start(&mut self, idx: u32) -> Result<(), SubmitError> {
        let zero_range_ok = self.zero_range_ok;
        let slot = &mut self.slots[idx as usize];
        if let Some(ring) = &mut self.ring {
            let fd = types::Fd(slot.fd);
            let entry: squeue::Entry = match slot.op {
                SlotOp::Read => {
                    opcode::Readv::new(fd, slot.iovecs.as_ptr(), slot.iovecs.len() as u32)
                        .offset(slot.offset)
                        .build()
                }
                SlotOp::Write => {
                    opcode::Writev::new(fd, slot.iovecs.as_ptr(), slot.iovecs.len() as u32)
                        .offset(slot.offset)
                        .build()
                }
                SlotOp::Fsync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                SlotOp::Falloc(mode) => {
                    let mode = falloc_flags(mode, zero_range_ok);
                    opcode::Fallocate::new(fd, slot.len)
                        .offset(slot.offset)
                        .mode(mode)
                        .build()
                }
            };
            let entry = entry.user_data(u64::from(idx));
            // SAFETY: the iovec array and the buffers it points to stay valid until the CQE:
            // the slot is not reused before its completion is polled, and guest memory stays
            // mapped for the VM's life.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                // Cannot happen with as many SQ entries as slots, but never lose the request.
                self.free.push(idx);
                return Err(SubmitError::Busy);
            }
            self.unsubmitted += 1;
            return Ok(());
        }
        let result = match slot.op {
            SlotOp::Read | SlotOp::Write => rw_sync(slot),
            SlotOp::Fsync => {
                // SAFETY: plain syscall on an fd the backend owns.
                match unsafe { libc::fdatasync(slot.fd) } {
                    0 => Ok(0),
                    _ => Err(log_io_error("fdatasync", io::Error::last_os_error())),
                }
            }
            SlotOp::Falloc(mode) => {
                let first = if zero_range_ok {
                    mode
                } else {
                    FallocMode::PunchHole
                };
                match falloc_sync(slot.fd, first, slot.offset, slot.len) {
                    Err(DiskError::Unsupported) if first == FallocMode::ZeroRange => {
                        self.zero_range_ok = false;
                        falloc_sync(slot.fd, FallocMode::PunchHole, slot.offset, slot.len)
                    }
                    r => r,
                }
            }
        };
        self.finish_sync(idx, result);
        Ok(())
    }

    fn finish_sync(&mut self, idx: u32, result: Result<u32, DiskError>) {
        self.ready.push((idx, result));
    }
}

fn invalid(msg: &str) -> SubmitError {
    SubmitError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()))
}

fn falloc_flags(mode: FallocMode, zero_range_ok: bool) -> i32 {
    match mode {
        FallocMode::ZeroRange if zero_range_ok => {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        }
        _ => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    }
}

fn map_result(slot: &Slot, res: i32) -> Result<u32, DiskError> {
    if res < 0 {
        let err = io::Error::from_raw_os_error(-res);
        return match (slot.op, -res) {
            (SlotOp::Falloc(_), libc::EOPNOTSUPP) => Err(DiskError::Unsupported),
            _ => Err(log_io_error("io_uring request", err)),
        };
    }
    match slot.op {
        SlotOp::Read | SlotOp::Write if res as u64 != slot.len => {
            log::warn!(
                "short disk transfer: {res} of {} bytes at offset {}",
                slot.len,
                slot.offset
            );
            Err(DiskError::Io)
        }
        SlotOp::Read | SlotOp::Write => Ok(res as u32),
        _ => Ok(0),
    }
}

fn log_io_error(what: &str, err: io::Error) -> DiskError {
    log::warn!("disk {what} failed: {err}");
    DiskError::Io
}

/// fallocate(2) with KEEP_SIZE.
pub(crate) fn falloc_sync(
    fd: RawFd,
    mode: FallocMode,
    offset: u64,
    len: u64,
) -> Result<u32, DiskError> {
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(DiskError::Io);
    };
    // SAFETY: plain syscall on an fd the backend owns; no memory is passed.
    let rc = unsafe { libc::fallocate64(fd, falloc_flags(mode, true), off, l) };
    if rc == 0 {
        return Ok(0);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Err(DiskError::Unsupported),
        _ => Err(log_io_error("fallocate", err)),
    }
}

/// preadv/pwritev until the whole request is done, continuing after short transfers.
fn rw_sync(slot: &mut Slot) -> Result<u32, DiskError> {
    let mut done: u64 = 0;
    let mut first = 0usize;
    while done < slot.len {
        let iov = &slot.iovecs[first..];
        let Ok(offset) = i64::try_from(slot.offset + done) else {
            return Err(DiskError::Io);
        };
        // SAFETY: the iovecs describe guest buffers the device validated; the kernel reads or
        // writes only within them.
        let n = unsafe {
            if slot.op == SlotOp::Write {
                libc::pwritev64(slot.fd, iov.as_ptr(), iov.len() as i32, offset)
            } else {
                libc::preadv64(slot.fd, iov.as_ptr(), iov.len() as i32, offset)
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(log_io_error("preadv/pwritev", err));
        }
        if n == 0 {
            log::warn!(
                "disk transfer hit end of file at offset {}",
                slot.offset + done
            );
            return Err(DiskError::Io);
        }
        done += n as u64;
        // Skip fully transferred iovecs and trim the partially transferred one.
        let mut left = n as usize;
        while left > 0 && first < slot.iovecs.len() {
            let v = &mut slot.iovecs[first];
            if left >= v.iov_len {
                left -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same buffer, by less than its length.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left).cast() };
                v.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(done as u32)
}
