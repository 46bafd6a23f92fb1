//! Connection loss: tgtd is killed in the middle of a write burst and restarted on the same
//! port and LUN file. Every write must complete successfully and be in the file afterwards; with
//! no target coming back, outstanding requests must fail after the configured timeout.

mod iscsi_support;

use std::time::{Duration, Instant};

use ferry_devices::storage::iscsi::{open, open_iscsi};
use ferry_devices::storage::{DiskBackend, DiskError, DiskOp, DiskRequest, GuestBuf};
use iscsi_support::{pattern, wait_for, Setup, Tgtd};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[test]
fn write_burst_survives_target_restart() {
    let mut t = Tgtd::start(64 * MIB, Setup::default());
    let mut disk = open(&format!("{}?timeout=60", t.url(1)), None, false).expect("open");
    let total = (64 * MIB as usize) / CHUNK;
    let mut data: Vec<Vec<u8>> = (0..total).map(|i| pattern(i as u64 + 7, CHUNK)).collect();
    let depth = 16;
    let (mut next, mut done, mut killed) = (0usize, 0usize, false);
    while done < total {
        while next < total && disk.in_flight() < depth {
            let b = [GuestBuf {
                ptr: data[next].as_mut_ptr(),
                len: CHUNK as u32,
            }];
            let req = DiskRequest {
                tag: next as u64,
                op: DiskOp::Write,
                offset: (next * CHUNK) as u64,
                len: CHUNK as u64,
                bufs: &b,
            };
            disk.submit(&req).unwrap();
            next += 1;
        }
        disk.kick().unwrap();
        let in_flight_at_kill = disk.in_flight();
        for c in wait_for(&mut disk, 1, Duration::from_secs(90)) {
            assert_eq!(c.result, Ok(CHUNK as u32), "write {} failed", c.tag);
            done += 1;
        }
        if !killed && done >= total / 3 {
            killed = true;
            assert!(
                in_flight_at_kill > 1,
                "the kill must hit outstanding writes"
            );
            t.kill();
            std::thread::sleep(Duration::from_millis(500));
            t.spawn();
        }
    }
    assert!(killed);
    assert!(disk.logins() >= 2, "the session must have logged in again");
    let mut flush = [0u8; 0];
    assert_eq!(
        iscsi_support::io(&mut disk, DiskOp::Flush, 0, &mut flush),
        Ok(0)
    );
    drop(disk);
    for (i, d) in data.iter().enumerate() {
        assert!(
            t.read_file((i * CHUNK) as u64, CHUNK) == *d,
            "write {i} missing from the LUN file"
        );
    }
}

#[test]
fn requests_fail_after_timeout_without_target() {
    let mut t = Tgtd::start(8 * MIB, Setup::default());
    let mut disk = open_iscsi(&format!("{}?timeout=2", t.url(1)), None, false).expect("open");
    t.kill();
    let mut buf = vec![1u8; 4096];
    let b = [GuestBuf {
        ptr: buf.as_mut_ptr(),
        len: 4096,
    }];
    let start = Instant::now();
    disk.submit(&DiskRequest {
        tag: 1,
        op: DiskOp::Write,
        offset: 0,
        len: 4096,
        bufs: &b,
    })
    .unwrap();
    disk.kick().unwrap();
    let c = wait_for(disk.as_mut(), 1, Duration::from_secs(30));
    assert_eq!(c[0].result, Err(DiskError::Io));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    // The session is still down: a new request fails at once instead of waiting again.
    let start = Instant::now();
    disk.submit(&DiskRequest {
        tag: 2,
        op: DiskOp::Write,
        offset: 0,
        len: 4096,
        bufs: &b,
    })
    .unwrap();
    disk.kick().unwrap();
    let c = wait_for(disk.as_mut(), 1, Duration::from_secs(30));
    assert_eq!((c[0].tag, c[0].result), (2, Err(DiskError::Io)));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Dropping a backend whose target is gone does not hang.
    let start = Instant::now();
    drop(disk);
    assert!(start.elapsed() < Duration::from_secs(15));
    drop(buf);
}
