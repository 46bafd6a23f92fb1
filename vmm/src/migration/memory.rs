//! Moving guest memory: the sender walks dirty bitmaps, sends runs of pages as MEM_DATA (straight
//! from guest memory with write(2), or batched through a buffer when small) and runs of zero
//! pages as MEM_ZERO markers; the receiver copies payloads straight into guest memory.
//!
//! Pages the host never backed (never touched by the guest, not swapped) are known to be zero
//! without reading them, using /proc/self/pagemap: reading them would fault in and map the zero
//! page for nothing, which dominates the first round of a mostly idle large guest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use ferry_arch::GuestMemory;

use super::dirty::DirtyBitmaps;
use super::wire::{self, MAX_DATA_LEN, PAGE};

const PAGE_USIZE: usize = PAGE as usize;
/// Data runs up to this size are copied into the send buffer with their header (one syscall
/// per buffer instead of two per run); longer runs go to the socket straight from guest memory.
const SMALL_RUN: usize = 128 << 10;
const SEND_BUFFER: usize = 2 << 20;

/// Host memory residency from /proc/self/pagemap.
pub struct Residency {
    pagemap: Option<&'static File>,
    entries: Vec<u8>,
}

/// /proc/self/pagemap, opened once by the first caller. [`preopen`] makes that the main thread,
/// before it spawns a migration thread, whose seccomp filter has no `openat`.
static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();

/// Opens /proc/self/pagemap for later [`Residency::open`] calls on threads that cannot open
/// files (the migration thread).
pub fn preopen() {
    PAGEMAP.get_or_init(|| File::open("/proc/self/pagemap").ok());
}

const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

impl Residency {
    /// Without pagemap access every page counts as possibly non-zero (correct, only slower).
    pub fn open() -> Self {
        Self {
            pagemap: PAGEMAP
                .get_or_init(|| File::open("/proc/self/pagemap").ok())
                .as_ref(),
            entries: Vec::new(),
        }
    }

    /// For `pages` pages at `host_addr`, sets `out[i]` when page i may hold data.
    pub fn may_hold_data(&mut self, host_addr: usize, pages: usize, out: &mut Vec<bool>) {
        out.clear();
        out.resize(pages, true);
        let Some(pagemap) = &self.pagemap else {
            return;
        };
        self.entries.resize(pages * 8, 0);
        let offset = (host_addr / PAGE_USIZE * 8) as u64;
        if pagemap.read_exact_at(&mut self.entries, offset).is_err() {
            return;
        }
        for (flag, entry) in out.iter_mut().zip(self.entries.chunks_exact(8)) {
            let e = u64::from_le_bytes(entry.try_into().unwrap_or([0xff; 8]));
            *flag = e & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0;
        }
    }
}

pub fn is_zero(page: &[u8]) -> bool {
    // Word compares: the compiler vectorises this into a tight loop.
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
}

/// Counts of what a round sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendStats {
    pub data_pages: u64,
    pub zero_pages: u64,
    pub bytes: u64,
}

/// Where pages go: a stream, and the socket under it when guest memory may be written to it
/// directly.
pub trait PageSink: Write {
    /// The socket to write(2) large runs to straight from guest memory; `None` when the stream
    /// transforms its bytes (TLS, the PSK channel), so every byte must go through [`Write`].
    fn raw_fd(&self) -> Option<RawFd>;
}

impl PageSink for std::os::unix::net::UnixStream {
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_fd().as_raw_fd())
    }
}

/// Streams pages to the destination.
pub struct MemorySender<'a, W: PageSink> {
    out: &'a mut W,
    buf: Vec<u8>,
    residency: Residency,
    flags: Vec<bool>,
    pub stats: SendStats,
}

impl<'a, W: PageSink> MemorySender<'a, W> {
    pub fn new(out: &'a mut W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(SEND_BUFFER),
            residency: Residency::open(),
            flags: Vec::new(),
            stats: SendStats::default(),
        }
    }

    /// Sends every page of guest memory (the first round).
    pub fn send_all(&mut self, mem: &GuestMemory) -> io::Result<()> {
        for region in mem.iter() {
            let pages = (region.len() / PAGE) as usize;
            self.send_run(region, 0, pages)?;
        }
        self.flush()
    }

    /// Sends the pages set in `maps` (one bitmap per region).
    pub fn send_dirty(&mut self, mem: &GuestMemory, maps: &DirtyBitmaps) -> io::Result<()> {
        for (region, map) in mem.iter().zip(maps) {
            let pages = (region.len() / PAGE) as usize;
            let mut page = 0usize;
            while page < pages {
                let word = map.get(page / 64).copied().unwrap_or(0) >> (page % 64);
                if word == 0 {
                    page = (page / 64 + 1) * 64;
                    continue;
                }
                if word & 1 == 0 {
                    page += word.trailing_zeros() as usize;
                    continue;
                }
                let start = page;
                while page < pages && bit(map, page) {
                    page += 1;
                }
                self.send_run(region, start, page - start)?;
            }
        }
        self.flush()
    }

    /// Sends `count` pages from page `first` of `region`, split into zero and data runs.
    fn send_run(
        &mut self,
        region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
        first: usize,
        count: usize,
    ) -> io::Result<()> {
        let base = region.as_ptr() as usize;
        let gpa = region.start_addr().0;
        let mut flags = std::mem::take(&mut self.flags);
        let mut done = 0;
        while done < count {
            // Look at residency in slices so the flag vector stays small.
            let chunk = (count - done).min(1 << 16);
            let chunk_first = first + done;
            self.residency
                .may_hold_data(base + chunk_first * PAGE_USIZE, chunk, &mut flags);
            let mut i = 0;
            while i < chunk {
                let zero_at = |j: usize| -> bool {
                    if !flags[j] {
                        return true;
                    }
                    let ptr = (base + (chunk_first + j) * PAGE_USIZE) as *const u8;
                    // SAFETY: the page lies inside the region's live mapping; the guest may
                    // change it concurrently, which the dirty log catches in the next round.
                    is_zero(unsafe { std::slice::from_raw_parts(ptr, PAGE_USIZE) })
                };
                let zero = zero_at(i);
                let start = i;
                i += 1;
                let max_run = if zero {
                    usize::MAX
                } else {
                    MAX_DATA_LEN as usize / PAGE_USIZE
                };
                while i < chunk && i - start < max_run && zero_at(i) == zero {
                    i += 1;
                }
                let run_gpa = gpa + ((chunk_first + start) as u64) * PAGE;
                let run_pages = i - start;
                if zero {
                    self.push(&wire::mem_zero_message(run_gpa, run_pages as u64 * PAGE))?;
                    self.stats.zero_pages += run_pages as u64;
                } else {
                    let ptr = (base + (chunk_first + start) * PAGE_USIZE) as *const u8;
                    self.send_data(run_gpa, ptr, run_pages * PAGE_USIZE)?;
                    self.stats.data_pages += run_pages as u64;
                }
            }
            done += chunk;
        }
        self.flags = flags;
        Ok(())
    }

    fn send_data(&mut self, gpa: u64, ptr: *const u8, len: usize) -> io::Result<()> {
        let header = wire::mem_data_header(gpa, len as u32);
        if len <= SMALL_RUN {
            if self.buf.len() + header.len() + len > SEND_BUFFER {
                self.flush()?;
            }
            self.buf.extend_from_slice(&header);
            // SAFETY: `len` bytes at `ptr` lie inside guest memory (see send_run).
            self.buf
                .extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
            return Ok(());
        }
        self.push(&header)?;
        self.flush()?;
        match self.out.raw_fd() {
            Some(fd) => write_raw(fd, ptr, len)?,
            None => {
                // SAFETY: `len` bytes at `ptr` lie inside guest memory (see send_run). The
                // guest may change them while they are encrypted; the dirty log resends them.
                self.out
                    .write_all(unsafe { std::slice::from_raw_parts(ptr, len) })?
            }
        }
        self.stats.bytes += len as u64;
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.len() + bytes.len() > SEND_BUFFER {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes out whatever is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.stats.bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes a small message after flushing pending pages, keeping the stream in order.
    pub fn send_message(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.push(bytes)?;
        self.flush()
    }
}

fn bit(map: &[u64], page: usize) -> bool {
    map.get(page / 64)
        .is_some_and(|w| w >> (page % 64) & 1 == 1)
}

/// write(2) straight from guest memory, without forming a Rust reference to memory the guest may
/// be changing.
fn write_raw(fd: i32, mut ptr: *const u8, mut len: usize) -> io::Result<()> {
    while len > 0 {
        // SAFETY: ptr..ptr+len is inside a live guest memory mapping.
        let n = unsafe { libc::write(fd, ptr.cast(), len) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // SAFETY: n ≤ len, so the pointer stays inside the range.
        ptr = unsafe { ptr.add(n as usize) };
        len -= n as usize;
    }
    Ok(())
}

/// True when `[gpa, gpa + len)` lies inside one RAM region.
pub fn range_in_ram(mem: &GuestMemory, gpa: u64, len: u64) -> bool {
    host_range(mem, gpa, len).is_some()
}

fn host_range(mem: &GuestMemory, gpa: u64, len: u64) -> Option<*mut u8> {
    mem.iter().find_map(|region| {
        let start = region.start_addr().0;
        let end = start + region.len();
        (gpa >= start && gpa.checked_add(len)? <= end)
            .then(|| (region.as_ptr() as usize + (gpa - start) as usize) as *mut u8)
    })
}

/// Reads a MEM_DATA payload from `input` into guest memory. The caller checked the range.
pub fn receive_data(
    mem: &GuestMemory,
    input: &mut impl Read,
    gpa: u64,
    len: u32,
) -> io::Result<()> {
    let ptr = host_range(mem, gpa, u64::from(len))
        .ok_or_else(|| io::Error::other("memory range outside guest RAM"))?;
    // SAFETY: the range is inside guest memory (checked above); the destination's vCPUs are
    // paused, so nothing else accesses it while we fill it.
    let slice = unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) };
    input.read_exact(slice)
}

/// Makes a range read as zero: drops the backing pages of the anonymous mapping.
pub fn receive_zero(mem: &GuestMemory, gpa: u64, len: u64) -> io::Result<()> {
    let ptr = host_range(mem, gpa, len)
        .ok_or_else(|| io::Error::other("memory range outside guest RAM"))?;
    // SAFETY: page-aligned range inside our private anonymous guest mapping (checked by the
    // caller and above); MADV_DONTNEED makes it read back as zeroes.
    let rc = unsafe { libc::madvise(ptr.cast(), len as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A digest of all guest memory: CRC32C per page folded in order. Never-backed pages count as
/// zero pages without being read, so both sides agree however the zeroes came to be.
pub fn memory_digest(mem: &GuestMemory) -> u64 {
    let zero_crc = crc32c::crc32c(&[0u8; PAGE_USIZE]);
    let mut residency = Residency::open();
    let mut flags = Vec::new();
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for region in mem.iter() {
        let base = region.as_ptr() as usize;
        let pages = (region.len() / PAGE) as usize;
        let mut done = 0;
        while done < pages {
            let chunk = (pages - done).min(1 << 16);
            residency.may_hold_data(base + done * PAGE_USIZE, chunk, &mut flags);
            for (i, may) in flags.iter().enumerate() {
                let crc = if *may {
                    let ptr = (base + (done + i) * PAGE_USIZE) as *const u8;
                    // SAFETY: inside the live mapping; the VM is paused while digesting.
                    crc32c::crc32c(unsafe { std::slice::from_raw_parts(ptr, PAGE_USIZE) })
                } else {
                    zero_crc
                };
                digest = (digest ^ u64::from(crc)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            done += chunk;
        }
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vm_memory::{Bytes, GuestAddress};

    fn mem(mib: usize) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn pattern(mem: &GuestMemory) {
        for (i, gpa) in [0x0u64, 0x5000, 0x6000, 0x20_0000, 0x3f_f000]
            .iter()
            .enumerate()
        {
            mem.write_obj(0xdead_0000_u64 + i as u64, GuestAddress(*gpa))
                .unwrap();
        }
        mem.write_slice(&[7u8; 300 << 10], GuestAddress(0x10_0000))
            .unwrap();
    }

    /// Applies a stream to `dst` the way the destination does.
    fn apply(stream: &[u8], dst: &GuestMemory) {
        let mut r = std::io::Cursor::new(stream);
        while (r.position() as usize) < stream.len() {
            match wire::read_source_message(&mut r, |g, l| range_in_ram(dst, g, l)).unwrap() {
                wire::SourceMessage::MemData { gpa, len } => {
                    receive_data(dst, &mut r, gpa, len).unwrap()
                }
                wire::SourceMessage::MemZero { gpa, len } => receive_zero(dst, gpa, len).unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn send_to_vec(f: impl FnOnce(&mut MemorySender<'_, UnixStream>)) -> Vec<u8> {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            b.read_to_end(&mut v).unwrap();
            v
        });
        {
            let mut sender = MemorySender::new(&mut a);
            f(&mut sender);
        }
        drop(a);
        reader.join().unwrap()
    }

    #[test]
    fn full_copy_reproduces_memory_and_digest() {
        let src = mem(4);
        pattern(&src);
        let stream = send_to_vec(|s| s.send_all(&src).unwrap());
        // Zero pages travel as markers: the stream is far smaller than memory.
        assert!(stream.len() < 400 << 10, "{} bytes", stream.len());
        let dst = mem(4);
        apply(&stream, &dst);
        assert_eq!(memory_digest(&src), memory_digest(&dst));
        let v: u64 = dst.read_obj(GuestAddress(0x3f_f000)).unwrap();
        assert_eq!(v, 0xdead_0004);
    }

    #[test]
    fn dirty_rounds_copy_only_marked_pages_and_zero_rewrites() {
        let src = mem(4);
        pattern(&src);
        let dst = mem(4);
        apply(&send_to_vec(|s| s.send_all(&src).unwrap()), &dst);
        // Change two pages: one gets data, one becomes zero again.
        src.write_obj(0x1234_u64, GuestAddress(0x8000)).unwrap();
        src.write_obj(0u64, GuestAddress(0x5000)).unwrap();
        let mut map = vec![0u64; 1024 / 64];
        map[0] = (1 << 8) | (1 << 5);
        let stream = send_to_vec(|s| s.send_dirty(&src, &vec![map]).unwrap());
        assert!(stream.len() < 2 * 4096, "{}", stream.len());
        assert_ne!(memory_digest(&src), memory_digest(&dst));
        apply(&stream, &dst);
        assert_eq!(memory_digest(&src), memory_digest(&dst));
    }

    #[test]
    fn digest_sees_a_single_changed_byte() {
        let a = mem(2);
        let b = mem(2);
        assert_eq!(memory_digest(&a), memory_digest(&b));
        b.write_obj(1u8, GuestAddress(0x1f_ffff)).unwrap();
        assert_ne!(memory_digest(&a), memory_digest(&b));
    }

    #[test]
    fn ranges_outside_ram_are_refused() {
        let m = mem(2);
        assert!(range_in_ram(&m, 0, 2 << 20));
        assert!(!range_in_ram(&m, 0x1000, 2 << 20));
        assert!(!range_in_ram(&m, u64::MAX - 0xfff, 0x2000));
        assert!(receive_zero(&m, 2 << 20, 4096).is_err());
    }
}
