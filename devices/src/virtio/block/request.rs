//! Parsing and validation of one virtio-blk request (virtio 1.2 §5.2.6).
//!
//! A request is a descriptor chain: device-readable bytes (the 16-byte header, then data for
//! writes and discard/write-zeroes ranges), then device-writable bytes (data for reads, then the
//! one-byte status, last). The layout of bytes over descriptors is free (§2.7.4: no framing
//! assumptions), so the chain is handled as two byte streams, not as "descriptor 0 = header".
//!
//! Everything the guest wrote is hostile: the parser bounds every length and address, checks the
//! readable-then-writable order, rejects sectors past the disk or not aligned to its block size,
//! and translates every data buffer into one host range inside one guest memory region. A chain
//! that cannot even carry a status byte yields [`NoStatus`]; anything else malformed completes
//! with IOERR or UNSUPP. Nothing here allocates once the caller's vectors reached their
//! capacity bounds.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Address, GuestAddress};

use super::config::{MAX_RANGE_SECTORS, SECTOR_SIZE, SEG_MAX};
use crate::storage::{DiskInfo, DiskOp, GuestBuf};
pub use crate::virtio::desc::Desc;
use crate::virtio::desc::DescWalker;
use crate::virtio::fastmem::FastMem;

/// Most descriptors looked at in one chain (direct chains are bounded by the queue size;
/// indirect tables could be far longer).
pub const MAX_DESCS: usize = 512;
/// Largest read or write accepted, far above what guests send (Linux: at most a few MiB) and
/// below every host limit on one readv/writev.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
const HEADER_LEN: u64 = 16;
const RANGE_LEN: u64 = 16;

pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// A parsed request, stored in a device slot until its completion.
#[derive(Debug)]
pub struct Request {
    pub head: u16,
    pub status_addr: GuestAddress,
    pub op: DiskOp,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Data bytes (read/write) or range bytes (discard/write-zeroes).
    pub len: u64,
    /// Host views of the data buffers, in order.
    pub bufs: Vec<GuestBuf>,
    /// Guest addresses of `bufs`, to mark them dirty when a read completes.
    pub addrs: Vec<GuestAddress>,
}

impl Request {
    pub fn new() -> Self {
        Self {
            head: 0,
            status_addr: GuestAddress(0),
            op: DiskOp::Flush,
            offset: 0,
            len: 0,
            // Small up front; a slot grows once (to at most SEG_MAX) and keeps its capacity.
            bufs: Vec::with_capacity(4),
            addrs: Vec::with_capacity(4),
        }
    }

    /// Bytes the device writes into the guest's buffers on success (data + status).
    pub fn used_len_ok(&self) -> u32 {
        match self.op {
            DiskOp::Read => (self.len as u32).saturating_add(1),
            _ => 1,
        }
    }
}

impl Default for Request {
    fn default() -> Self {
        Self::new()
    }
}

/// What to do with a parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send to the backend.
    Submit,
    /// Finished without the backend: write `status` and report `used_len`.
    Complete { status: u8, used_len: u32 },
}

/// The chain has no writable last byte in guest memory: no status can be reported, the driver is
/// broken and the device needs a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoStatus;

/// The disk properties requests are validated against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub capacity: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

impl Limits {
    pub fn new(info: &DiskInfo, capacity: u64) -> Self {
        Self {
            capacity,
            block_size: info.logical_block_size.max(SECTOR_SIZE as u32),
            read_only: info.read_only,
            discard: info.discard && !info.read_only,
            write_zeroes: info.write_zeroes && !info.read_only,
        }
    }
}

const fn done(status: u8) -> Outcome {
    Outcome::Complete {
        status,
        used_len: 1,
    }
}

/// Parses the chain at `head` into `req`. `descs` is scratch space reused across calls.
pub fn parse(
    walker: &DescWalker<'_>,
    head: u16,
    mem: &FastMem<'_>,
    limits: &Limits,
    id: &[u8; VIRTIO_BLK_ID_BYTES as usize],
    descs: &mut Vec<Desc>,
    req: &mut Request,
) -> Result<Outcome, NoStatus> {
    req.head = head;
    req.bufs.clear();
    req.addrs.clear();
    req.offset = 0;
    req.len = 0;
    descs.clear();

    let mut last = None;
    let mut overflow = false;
    let mut order_ok = true;
    let mut seen_writable = false;
    walker.walk(head, |desc| {
        order_ok &= desc.writable || !seen_writable;
        seen_writable |= desc.writable;
        if descs.len() < MAX_DESCS {
            descs.push(desc);
        } else {
            overflow = true;
        }
        last = Some(desc);
        true
    });

    let last = last.ok_or(NoStatus)?;
    if !last.writable || last.len == 0 {
        return Err(NoStatus);
    }
    req.status_addr = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(NoStatus)?;
    if mem.slice(req.status_addr, 1).is_none() {
        return Err(NoStatus);
    }
    if overflow || !order_ok {
        return Ok(done(STATUS_IOERR));
    }

    let readable_len: u64 = stream_len(descs, false);
    let writable_len: u64 = stream_len(descs, true);
    let mut header = [0u8; HEADER_LEN as usize];
    if readable_len < HEADER_LEN || !gather(mem, descs, 0, &mut header) {
        return Ok(done(STATUS_IOERR));
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    // Data after the header (readable) and before the status byte (writable).
    let read_data = readable_len - HEADER_LEN;
    let write_data = writable_len - 1;

    match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let is_write = req_type == VIRTIO_BLK_T_OUT;
            let (len, stray) = if is_write {
                (read_data, write_data)
            } else {
                (write_data, read_data)
            };
            if stray != 0 || (is_write && limits.read_only) {
                return Ok(done(STATUS_IOERR));
            }
            let Some(offset) = check_range(limits, sector, len) else {
                return Ok(done(STATUS_IOERR));
            };
            if len == 0 {
                return Ok(done(STATUS_OK));
            }
            let start = if is_write { HEADER_LEN } else { 0 };
            if !map_data(mem, descs, is_write, start, start + len, req) {
                return Ok(done(STATUS_IOERR));
            }
            req.op = if is_write {
                DiskOp::Write
            } else {
                DiskOp::Read
            };
            req.offset = offset;
            req.len = len;
            Ok(Outcome::Submit)
        }
        VIRTIO_BLK_T_FLUSH => {
            req.op = DiskOp::Flush;
            Ok(Outcome::Submit)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = write_data.min(id.len() as u64) as usize;
            if !scatter(mem, descs, &id[..n]) {
                return Ok(done(STATUS_IOERR));
            }
            Ok(Outcome::Complete {
                status: STATUS_OK,
                used_len: n as u32 + 1,
            })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            if (discard && !limits.discard) || (!discard && !limits.write_zeroes) {
                return Ok(done(if limits.read_only {
                    STATUS_IOERR
                } else {
                    STATUS_UNSUPP
                }));
            }
            if write_data != 0 || read_data == 0 || !read_data.is_multiple_of(RANGE_LEN) {
                return Ok(done(STATUS_IOERR));
            }
            if read_data > RANGE_LEN {
                // More ranges than max_discard_seg / max_write_zeroes_seg (1).
                return Ok(done(STATUS_UNSUPP));
            }
            let mut range = [0u8; RANGE_LEN as usize];
            if !gather(mem, descs, HEADER_LEN, &mut range) {
                return Ok(done(STATUS_IOERR));
            }
            let mut b8 = [0u8; 8];
            b8.copy_from_slice(&range[0..8]);
            let start = u64::from_le_bytes(b8);
            let sectors = u32::from_le_bytes([range[8], range[9], range[10], range[11]]);
            let flags = u32::from_le_bytes([range[12], range[13], range[14], range[15]]);
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Ok(done(STATUS_UNSUPP));
            }
            if sectors > MAX_RANGE_SECTORS {
                return Ok(done(STATUS_IOERR));
            }
            let len = u64::from(sectors) * SECTOR_SIZE;
            let Some(offset) = check_range(limits, start, len) else {
                return Ok(done(STATUS_IOERR));
            };
            if len == 0 {
                return Ok(done(STATUS_OK));
            }
            req.op = if discard {
                DiskOp::Discard
            } else {
                DiskOp::WriteZeroes
            };
            req.offset = offset;
            req.len = len;
            Ok(Outcome::Submit)
        }
        _ => Ok(done(STATUS_UNSUPP)),
    }
}

/// Byte offset of `sector` if `[sector * 512, + len)` lies on the disk and is aligned to the
/// disk's block size.
fn check_range(limits: &Limits, sector: u64, len: u64) -> Option<u64> {
    let bs = u64::from(limits.block_size);
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (len <= MAX_REQUEST_BYTES
        && offset.is_multiple_of(bs)
        && len.is_multiple_of(bs)
        && end <= limits.capacity)
        .then_some(offset)
}

fn stream_len(descs: &[Desc], writable: bool) -> u64 {
    descs
        .iter()
        .filter(|d| d.writable == writable)
        .map(|d| u64::from(d.len))
        .sum()
}

/// Calls `f(addr, len)` for the pieces covering bytes `[start, end)` of the readable
/// (`writable == false`) or writable stream. Stops early when `f` returns false.
fn for_each_piece(
    descs: &[Desc],
    writable: bool,
    start: u64,
    end: u64,
    mut f: impl FnMut(GuestAddress, u32) -> bool,
) -> bool {
    let mut pos = 0u64;
    for d in descs.iter().filter(|d| d.writable == writable) {
        let d_start = pos;
        let d_end = pos + u64::from(d.len);
        pos = d_end;
        let lo = d_start.max(start);
        let hi = d_end.min(end);
        if lo >= hi {
            if d_start >= end {
                break;
            }
            continue;
        }
        let Some(addr) = d.addr.checked_add(lo - d_start) else {
            return false;
        };
        if !f(addr, (hi - lo) as u32) {
            return false;
        }
    }
    true
}

/// Copies readable-stream bytes `[start, start + out.len())` into `out`.
fn gather(mem: &FastMem<'_>, descs: &[Desc], start: u64, out: &mut [u8]) -> bool {
    let mut filled = 0usize;
    let end = start + out.len() as u64;
    for_each_piece(descs, false, start, end, |addr, len| {
        let chunk = &mut out[filled..filled + len as usize];
        filled += len as usize;
        mem.read(addr, chunk)
    }) && filled == out.len()
}

/// Writes `data` at the start of the writable stream (GET_ID); marks the pages dirty.
fn scatter(mem: &FastMem<'_>, descs: &[Desc], data: &[u8]) -> bool {
    let mut done = 0usize;
    for_each_piece(descs, true, 0, data.len() as u64, |addr, len| {
        let chunk = &data[done..done + len as usize];
        done += len as usize;
        mem.write_slice(chunk, addr)
    })
}

/// Translates the data bytes `[start, end)` into host buffers in `req`: from the readable stream
/// for a disk write (the device reads guest memory), from the writable one for a disk read.
fn map_data(
    mem: &FastMem<'_>,
    descs: &[Desc],
    disk_write: bool,
    start: u64,
    end: u64,
    req: &mut Request,
) -> bool {
    let stream_writable = !disk_write;
    for_each_piece(descs, stream_writable, start, end, |addr, len| {
        if req.bufs.len() >= SEG_MAX as usize {
            return false;
        }
        let Some(buf) = translate(mem, addr, len) else {
            return false;
        };
        req.bufs.push(buf);
        req.addrs.push(addr);
        true
    })
}

/// Host view of `[addr, addr + len)`, which must lie inside one guest memory region.
pub fn translate(mem: &FastMem<'_>, addr: GuestAddress, len: u32) -> Option<GuestBuf> {
    let slice = mem.slice(addr, len as usize)?;
    if slice.len() != len as usize {
        return None;
    }
    Some(GuestBuf {
        ptr: slice.ptr_guard_mut().as_ptr(),
        len,
    })
}
