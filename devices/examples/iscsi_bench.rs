//! Throughput of the iSCSI backend: sequential 1 MiB reads and random 4 KiB reads (and, with
//! `--write`, the same as writes), each for a fixed time with a fixed queue depth.
//!
//! ```text
//! cargo run --release -p ferry-devices --example iscsi_bench -- iscsi://127.0.0.1:3260/IQN/1 [seconds] [--write]
//! ```
//! See docs/storage-iscsi-notes.md for a tgtd setup on loopback.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_devices::storage::iscsi::open_iscsi;
use ferry_devices::storage::{Completion, DiskBackend, DiskOp, DiskRequest, GuestBuf};

/// Counts heap allocations in every thread (the session thread included), to check that the
/// steady state allocates nothing per request.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `op` requests of `size` bytes at offsets from `next_offset` with `depth` in flight for
/// `secs`; returns (requests, bytes, elapsed, heap allocations meanwhile).
fn run(
    disk: &mut dyn DiskBackend,
    op: DiskOp,
    size: usize,
    depth: usize,
    secs: f64,
    mut next_offset: impl FnMut() -> u64,
) -> (u64, u64, Duration, u64) {
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0x5au8; size]).collect();
    let mut free: Vec<usize> = (0..depth).collect();
    let mut out: Vec<Completion> = Vec::with_capacity(depth);
    let fd = disk.notifier().expect("notifier");
    let start = Instant::now();
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    let (mut n, mut bytes) = (0u64, 0u64);
    let deadline = start + Duration::from_secs_f64(secs);
    loop {
        // Keep `depth` requests in flight until the deadline, then let them drain.
        let take = if Instant::now() < deadline {
            free.len()
        } else {
            0
        };
        for i in free.drain(free.len() - take..) {
            let b = [GuestBuf {
                ptr: bufs[i].as_mut_ptr(),
                len: size as u32,
            }];
            let req = DiskRequest {
                tag: i as u64,
                op,
                offset: next_offset(),
                len: size as u64,
                bufs: &b,
            };
            disk.submit(&req).expect("submit");
        }
        disk.kick().expect("kick");
        if free.len() == depth {
            break;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 1000) };
        out.clear();
        disk.poll_completions(&mut out);
        for c in &out {
            let got = c.result.expect("I/O failed");
            n += 1;
            bytes += got as u64;
            free.push(c.tag as usize);
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_before;
    (n, bytes, start.elapsed(), allocs)
}

fn report(name: &str, (n, bytes, t, allocs): (u64, u64, Duration, u64)) {
    let s = t.as_secs_f64();
    println!(
        "{name:<28} {:>9.1} MiB/s {:>9.0} IOPS ({n} requests in {s:.2} s, {allocs} heap allocations)",
        bytes as f64 / s / (1024.0 * 1024.0),
        n as f64 / s
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(url) = args.get(1) else {
        eprintln!("usage: iscsi_bench URL [seconds] [--write]");
        std::process::exit(2);
    };
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let writes = args.iter().any(|a| a == "--write");
    let mut disk = open_iscsi(url, None, !writes).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    let size = disk.info().size_bytes;
    println!(
        "LUN: {} MiB, block size {}",
        size >> 20,
        disk.info().logical_block_size
    );
    let mib = 1u64 << 20;
    let mut ops = vec![DiskOp::Read];
    if writes {
        ops.push(DiskOp::Write);
    }
    for op in ops {
        let mut pos = 0u64;
        let seq = run(disk.as_mut(), op, mib as usize, 8, secs, || {
            let o = pos;
            pos = (pos + mib) % (size / mib * mib);
            o
        });
        report(&format!("{op:?} sequential 1 MiB QD8"), seq);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let blocks = size / 4096;
        let rnd = run(disk.as_mut(), op, 4096, 32, secs, || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * 4096
        });
        report(&format!("{op:?} random 4 KiB QD32"), rnd);
        let rnd1 = run(disk.as_mut(), op, 4096, 1, secs, || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * 4096
        });
        report(&format!("{op:?} random 4 KiB QD1"), rnd1);
    }
}
