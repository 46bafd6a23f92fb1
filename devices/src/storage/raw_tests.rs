//! Tests of the local backends (file and loop block device) on both engines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{RawDisk, RawOptions};
use crate::storage::file::open_file;
use crate::storage::open::{open_disk, open_disk_with, DiskOptions, OpenError};
use crate::storage::uring::EngineKind;
use crate::storage::{
    Completion, DiskBackend, DiskError, DiskOp, DiskRequest, GuestBuf, SubmitError,
};
use crate::GuestMemory;

const MIB: u64 = 1 << 20;

/// A temporary file removed on drop.
pub(crate) struct TempFile(pub PathBuf);

impl TempFile {
    pub(crate) fn new(size: u64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ferry-disk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A loop device over a file, detached on drop.
pub(crate) struct LoopDev {
    pub(crate) dev: PathBuf,
    _file: TempFile,
}

impl LoopDev {
    /// `None` (with the reason printed) when loop devices cannot be set up here.
    pub(crate) fn new(size: u64) -> Option<Self> {
        let file = TempFile::new(size);
        let out = match Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file.0)
            .output()
        {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                eprintln!(
                    "skipping: losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return None;
            }
            Err(e) => {
                eprintln!("skipping: losetup unavailable: {e}");
                return None;
            }
        };
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Self { dev, _file: file })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).unwrap()
}

fn gbuf(mem: &GuestMemory, addr: u64, len: u32) -> GuestBuf {
    let s = GuestMemoryBackend::get_slice(mem, GuestAddress(addr), len as usize).unwrap();
    GuestBuf {
        ptr: s.ptr_guard_mut().as_ptr(),
        len,
    }
}

fn fill(mem: &GuestMemory, addr: u64, len: usize, byte: u8) {
    use vm_memory::Bytes;
    mem.write_slice(&vec![byte; len], GuestAddress(addr))
        .unwrap();
}

fn read_back(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    use vm_memory::Bytes;
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Waits for the completions of `tags` (in any order).
fn wait(disk: &mut dyn DiskBackend, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        disk.poll_completions(&mut out);
        if out.len() >= n {
            return out;
        }
        if let Some(fd) = disk.notifier() {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 100) };
        }
    }
    panic!("completions did not arrive: {out:?}");
}

fn run(
    disk: &mut dyn DiskBackend,
    op: DiskOp,
    offset: u64,
    len: u64,
    bufs: &[GuestBuf],
) -> Result<u32, DiskError> {
    disk.submit(&DiskRequest {
        tag: 7,
        op,
        offset,
        len,
        bufs,
    })
    .unwrap();
    disk.kick().unwrap();
    let c = wait(disk, 1);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].tag, 7);
    assert_eq!(disk.in_flight(), 0);
    c[0].result
}

fn opts(engine: EngineKind) -> RawOptions {
    RawOptions {
        engine,
        ..RawOptions::default()
    }
}

/// Write two buffers, read them back through differently split buffers, flush.
fn rw_roundtrip(disk: &mut dyn DiskBackend, mem: &GuestMemory, offset: u64, misalign: u64) {
    fill(mem, 0x10000, 4096, 0xab);
    fill(mem, 0x20000, 8192, 0xcd);
    let w = [gbuf(mem, 0x10000, 4096), gbuf(mem, 0x20000, 8192)];
    assert_eq!(run(disk, DiskOp::Write, offset, 12288, &w), Ok(12288));
    let r = [
        gbuf(mem, 0x40000 + misalign, 512),
        gbuf(mem, 0x50000 + misalign, 12288 - 512),
    ];
    assert_eq!(run(disk, DiskOp::Read, offset, 12288, &r), Ok(12288));
    let mut got = read_back(mem, 0x40000 + misalign, 512);
    got.extend(read_back(mem, 0x50000 + misalign, 12288 - 512));
    let mut want = vec![0xab; 4096];
    want.extend(vec![0xcd; 8192]);
    assert_eq!(got, want);
    assert_eq!(run(disk, DiskOp::Flush, 0, 0, &[]), Ok(0));
}

fn zeroes_and_discard(disk: &mut dyn DiskBackend, mem: &GuestMemory) {
    fill(mem, 0x10000, 8192, 0x5a);
    let w = [gbuf(mem, 0x10000, 8192)];
    assert_eq!(run(disk, DiskOp::Write, 65536, 8192, &w), Ok(8192));
    assert_eq!(run(disk, DiskOp::WriteZeroes, 65536, 4096, &[]), Ok(0));
    let r = [gbuf(mem, 0x30000, 8192)];
    assert_eq!(run(disk, DiskOp::Read, 65536, 8192, &r), Ok(8192));
    let got = read_back(mem, 0x30000, 8192);
    assert!(got[..4096].iter().all(|&b| b == 0), "zeroed range");
    assert!(got[4096..].iter().all(|&b| b == 0x5a), "rest untouched");
    assert_eq!(run(disk, DiskOp::Discard, 65536 + 4096, 4096, &[]), Ok(0));
}

fn engines() -> [EngineKind; 2] {
    [EngineKind::Uring, EngineKind::Sync]
}

#[test]
fn file_read_write_flush_on_both_engines() {
    for engine in engines() {
        let f = TempFile::new(MIB);
        let mut disk = open_file(&f.0, &opts(engine)).unwrap();
        assert_eq!(disk.uses_io_uring(), engine == EngineKind::Uring);
        assert_eq!(disk.info().size_bytes, MIB);
        assert_eq!(disk.notifier().is_some(), engine == EngineKind::Uring);
        let mem = memory();
        rw_roundtrip(&mut disk, &mem, 4096, 0);
        zeroes_and_discard(&mut disk, &mem);
        // The data really is in the file.
        let data = std::fs::read(&f.0).unwrap();
        assert!(data[4096..8192].iter().all(|&b| b == 0xab));
    }
}

#[test]
fn direct_io_falls_back_for_unaligned_requests() {
    for engine in engines() {
        let f = TempFile::new(MIB);
        let o = RawOptions {
            direct: true,
            ..opts(engine)
        };
        let mut disk = open_file(&f.0, &o).unwrap();
        assert!(disk.is_direct());
        let mem = memory();
        rw_roundtrip(&mut disk, &mem, 8192, 0); // aligned: O_DIRECT
        rw_roundtrip(&mut disk, &mem, 512, 512); // 512-aligned only: buffered fd
        rw_roundtrip(&mut disk, &mem, 8192, 0); // and direct again sees the data
    }
}

#[test]
fn range_and_read_only_checks() {
    for engine in engines() {
        let f = TempFile::new(MIB);
        let mem = memory();
        let mut disk = open_file(&f.0, &opts(engine)).unwrap();
        let b = [gbuf(&mem, 0, 4096)];
        assert_eq!(
            run(&mut disk, DiskOp::Read, MIB - 2048, 4096, &b),
            Err(DiskError::Io)
        );
        assert_eq!(
            run(&mut disk, DiskOp::Read, u64::MAX - 100, 4096, &b),
            Err(DiskError::Io)
        );
        let ro = RawOptions {
            read_only: true,
            ..opts(engine)
        };
        let mut disk = open_file(&f.0, &ro).unwrap();
        assert!(disk.info().read_only && !disk.info().discard);
        assert_eq!(
            run(&mut disk, DiskOp::Write, 0, 4096, &b),
            Err(DiskError::Unsupported)
        );
        assert_eq!(run(&mut disk, DiskOp::Read, 0, 4096, &b), Ok(4096));
    }
}

#[test]
fn busy_when_all_slots_are_used() {
    for engine in engines() {
        let f = TempFile::new(MIB);
        let mem = memory();
        let o = RawOptions {
            queue_depth: 2,
            ..opts(engine)
        };
        let mut disk = open_file(&f.0, &o).unwrap();
        let b = [gbuf(&mem, 0, 4096)];
        let req = |tag| DiskRequest {
            tag,
            op: DiskOp::Read,
            offset: 0,
            len: 4096,
            bufs: &b,
        };
        disk.submit(&req(1)).unwrap();
        disk.submit(&req(2)).unwrap();
        assert!(matches!(disk.submit(&req(3)), Err(SubmitError::Busy)));
        assert_eq!(disk.in_flight(), 2);
        disk.kick().unwrap();
        let mut tags: Vec<u64> = wait(&mut disk, 2).iter().map(|c| c.tag).collect();
        tags.sort();
        assert_eq!(tags, [1, 2]);
        disk.submit(&req(3)).unwrap();
        disk.kick().unwrap();
        assert_eq!(wait(&mut disk, 1)[0].tag, 3);
    }
}

#[test]
fn refresh_sees_a_grown_file() {
    let f = TempFile::new(MIB);
    let mut disk = open_file(&f.0, &opts(EngineKind::Auto)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.0)
        .unwrap()
        .set_len(2 * MIB + 100)
        .unwrap();
    assert_eq!(disk.refresh().unwrap().size_bytes, 2 * MIB);
}

#[test]
fn loop_block_device() {
    let Some(lo) = LoopDev::new(4 * MIB) else {
        return;
    };
    for engine in engines() {
        let mut disk = open_disk_with(
            &lo.dev,
            &DiskOptions {
                engine,
                ..DiskOptions::default()
            },
        )
        .unwrap();
        let info = disk.info();
        assert_eq!(info.size_bytes, 4 * MIB);
        assert_eq!(info.logical_block_size, 512);
        assert!(info.write_zeroes);
        let mem = memory();
        rw_roundtrip(disk.as_mut(), &mem, 4096, 0);
        rw_roundtrip(disk.as_mut(), &mem, 4608, 512);
        fill(&mem, 0x10000, 8192, 0x5a);
        let w = [gbuf(&mem, 0x10000, 8192)];
        assert_eq!(run(disk.as_mut(), DiskOp::Write, 65536, 8192, &w), Ok(8192));
        assert_eq!(
            run(disk.as_mut(), DiskOp::WriteZeroes, 65536, 4096, &[]),
            Ok(0)
        );
        let r = [gbuf(&mem, 0x30000, 8192)];
        assert_eq!(run(disk.as_mut(), DiskOp::Read, 65536, 8192, &r), Ok(8192));
        let got = read_back(&mem, 0x30000, 8192);
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert!(got[4096..].iter().all(|&b| b == 0x5a));
        let discard = run(disk.as_mut(), DiskOp::Discard, 0, 4096, &[]);
        assert_eq!(discard.is_ok(), info.discard, "{discard:?}");
    }
}

#[test]
fn open_disk_reports_clear_errors() {
    let missing = Path::new("/nonexistent/ferry-disk");
    assert!(matches!(
        open_disk(missing, false, None),
        Err(OpenError::NotFound(_))
    ));
    let dir = std::env::temp_dir();
    assert!(matches!(
        open_disk(&dir, false, None),
        Err(OpenError::NotADisk {
            kind: "directory",
            ..
        })
    ));
    assert!(matches!(
        open_disk("/dev/null", false, None),
        Err(OpenError::NotADisk {
            kind: "character device",
            ..
        })
    ));
    assert!(matches!(
        open_disk("iscsi://[not-a-portal", false, None),
        Err(OpenError::Iscsi { .. })
    ));
    let f = TempFile::new(MIB);
    let disk = open_disk(&f.0, true, None).unwrap();
    assert!(disk.info().read_only);
    let msg = open_disk(missing, false, None).err().unwrap().to_string();
    assert!(msg.contains("/nonexistent/ferry-disk"), "{msg}");
}

#[allow(dead_code)]
fn _assert_send(d: RawDisk) -> Box<dyn DiskBackend> {
    Box::new(d)
}
