//! ferry's iSCSI initiator against a real target (tgtd on loopback, file-backed LUN).
//! Needs root and the `tgt` package; fails with a clear message if tgtd is missing.

mod iscsi_support;

use std::time::Duration;

use ferry_devices::storage::iscsi::{open, open_iscsi, Error};
use ferry_devices::storage::{DiskBackend, DiskError, DiskOp, DiskRequest, GuestBuf};
use iscsi_support::{io, pattern, read, wait_for, write, Setup, Tgtd, IQN};

const MIB: u64 = 1024 * 1024;

/// Writes of several sizes (immediate data only, unsolicited + R2T, many R2Ts), checked against
/// the backing file byte for byte and read back through the initiator.
fn read_write_verify(disk: &mut dyn DiskBackend, t: &Tgtd) {
    for (i, (off, len)) in [
        (0u64, 512usize),
        (4096, 4096),
        (MIB, 65536),
        (3 * MIB + 512, 300 * 1024),
        (8 * MIB, 2 * MIB as usize + 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(i as u64 + 1, len);
        assert_eq!(
            write(disk, off, &data),
            Ok(len as u32),
            "write {len} at {off}"
        );
        assert_eq!(io(disk, DiskOp::Flush, 0, &mut []), Ok(0));
        assert!(
            t.read_file(off, len) == data,
            "file content differs after write of {len} at {off}"
        );
        assert!(
            read(disk, off, len).unwrap() == data,
            "read back differs for {len} at {off}"
        );
    }
}

#[test]
fn read_write_verify_and_queueing() {
    let t = Tgtd::start(32 * MIB, Setup::default());
    // Data written by the host is what the initiator reads.
    std::fs::write(&t.lun_file, pattern(99, 32 * MIB as usize)).unwrap();
    let mut disk = open_iscsi(&t.url(1), None, false).expect("open");
    let info = disk.info();
    assert_eq!(info.size_bytes, 32 * MIB);
    assert_eq!(info.logical_block_size, 512);
    assert!(!info.read_only);
    assert!(read(disk.as_mut(), 0, 1 << 20).unwrap() == t.read_file(0, 1 << 20));
    read_write_verify(disk.as_mut(), &t);

    // Many commands outstanding at once, with scattered buffers.
    let depth = disk.queue_depth();
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|i| pattern(1000 + i as u64, 8192)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let halves = [
            GuestBuf {
                ptr: b.as_mut_ptr(),
                len: 4096,
            },
            GuestBuf {
                ptr: b[4096..].as_mut_ptr(),
                len: 4096,
            },
        ];
        let req = DiskRequest {
            tag: i as u64,
            op: DiskOp::Write,
            offset: 16 * MIB + i as u64 * 8192,
            len: 8192,
            bufs: &halves,
        };
        disk.submit(&req).unwrap();
    }
    let extra = DiskRequest {
        tag: 999,
        op: DiskOp::Flush,
        offset: 0,
        len: 0,
        bufs: &[],
    };
    assert!(matches!(
        disk.submit(&extra),
        Err(ferry_devices::storage::SubmitError::Busy)
    ));
    assert_eq!(disk.in_flight(), depth);
    disk.kick().unwrap();
    let done = wait_for(disk.as_mut(), depth, Duration::from_secs(60));
    assert!(done.iter().all(|c| c.result == Ok(8192)), "{done:?}");
    assert_eq!(disk.in_flight(), 0);
    for (i, b) in bufs.iter().enumerate() {
        assert!(
            t.read_file(16 * MIB + i as u64 * 8192, 8192) == *b,
            "queued write {i}"
        );
    }

    // Out-of-range and misaligned requests fail without reaching the target.
    assert_eq!(read(disk.as_mut(), 32 * MIB, 512), Err(DiskError::Io));
    assert_eq!(read(disk.as_mut(), 100, 512), Err(DiskError::Io));
    assert_eq!(disk.refresh().unwrap().size_bytes, 32 * MIB);
}

#[test]
fn write_zeroes_discard_and_read_only() {
    let t = Tgtd::start(
        8 * MIB,
        Setup {
            thin: true,
            ..Setup::default()
        },
    );
    std::fs::write(&t.lun_file, vec![0xaau8; 8 * MIB as usize]).unwrap();
    let mut disk = open_iscsi(&t.url(1), None, false).expect("open");
    let info = disk.info();
    assert!(info.write_zeroes && info.discard, "{info:?}");
    // WRITE SAME(16) with a zero block.
    let r = io(
        disk.as_mut(),
        DiskOp::WriteZeroes,
        MIB,
        &mut vec![0u8; 65536],
    );
    assert_eq!(r, Ok(0));
    assert!(t.read_file(MIB, 65536).iter().all(|&b| b == 0));
    assert_eq!(t.read_file(MIB + 65536, 512), vec![0xaau8; 512]);
    // UNMAP: tgtd punches a hole, which reads back as zeroes.
    let r = io(
        disk.as_mut(),
        DiskOp::Discard,
        4 * MIB,
        &mut vec![0u8; MIB as usize],
    );
    assert_eq!(r, Ok(0));
    assert!(t.read_file(4 * MIB, MIB as usize).iter().all(|&b| b == 0));
    assert_eq!(t.read_file(5 * MIB, 512), vec![0xaau8; 512]);
    drop(disk);
    let mut ro = open_iscsi(&t.url(1), None, true).expect("open read-only");
    assert!(ro.info().read_only);
    assert_eq!(write(ro.as_mut(), 0, &[1u8; 512]), Err(DiskError::Io));
    assert_eq!(t.read_file(0, 512), vec![0xaau8; 512]);
}

#[test]
fn crc32c_digests() {
    let t = Tgtd::start(
        16 * MIB,
        Setup {
            digests: true,
            nop_in: true,
            ..Setup::default()
        },
    );
    let url = format!("{}?header-digest=crc32c&data-digest=crc32c", t.url(1));
    let mut disk = open(&url, None, false).expect("open with digests");
    read_write_verify(&mut disk, &t);
    // The target pings every second and drops connections whose pings go unanswered; after an
    // idle spell the first login must still be the only one.
    std::thread::sleep(Duration::from_secs(4));
    read_write_verify(&mut disk, &t);
    assert_eq!(
        disk.logins(),
        1,
        "NOP-In pings were not answered (or digests failed)"
    );
    // Only CRC32C offered, but the target allows only None: login fails with a clear error.
    let plain = Tgtd::start(MIB, Setup::default());
    let url = format!("{}?header-digest=crc32c", plain.url(1));
    let err = open(&url, None, false).err().expect("digest refused");
    assert!(matches!(err, Error::LoginFailed { .. }), "{err}");
}

/// Unsolicited Data-Out (InitialR2T=No) with a larger target MaxRecvDataSegmentLength, and
/// the opposite extreme: no immediate data and small bursts.
#[test]
fn unsolicited_and_small_burst_transfers() {
    let params = vec![
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "131072"),
        ("MaxRecvDataSegmentLength", "32768"),
    ];
    let t = Tgtd::start(
        16 * MIB,
        Setup {
            params,
            ..Setup::default()
        },
    );
    let mut disk = open_iscsi(&t.url(1), None, false).expect("open");
    read_write_verify(disk.as_mut(), &t);
    let params = vec![
        ("ImmediateData", "No"),
        ("MaxBurstLength", "16384"),
        ("MaxRecvDataSegmentLength", "4096"),
    ];
    let t = Tgtd::start(
        16 * MIB,
        Setup {
            params,
            ..Setup::default()
        },
    );
    let mut disk = open_iscsi(&t.url(1), None, false).expect("open");
    read_write_verify(disk.as_mut(), &t);
}

#[test]
fn chap_one_way_and_mutual() {
    let setup = Setup {
        chap: Some(("ferry".into(), "initiatorsecret1".into())),
        ..Setup::default()
    };
    let t = Tgtd::start(16 * MIB, setup);
    // Credentials in the URL.
    let url = format!(
        "iscsi://ferry%initiatorsecret1@127.0.0.1:{}/{IQN}/1",
        t.port
    );
    let mut disk = open_iscsi(&url, None, false).expect("CHAP with the right secret");
    assert_eq!(write(disk.as_mut(), 0, &[5u8; 4096]), Ok(4096));
    drop(disk);
    // Credentials from a secret file.
    let secret = t.dir.join("chap");
    std::fs::write(
        &secret,
        "# test\nusername=ferry\npassword=initiatorsecret1\n",
    )
    .unwrap();
    open_iscsi(&t.url(1), Some(&secret), false).expect("CHAP from the secret file");
    // Wrong secret, and no secret at all.
    std::fs::write(&secret, "username=ferry\npassword=wrongsecret12\n").unwrap();
    let err = open_iscsi(&t.url(1), Some(&secret), false)
        .err()
        .expect("wrong secret must fail");
    assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let err = open_iscsi(&t.url(1), None, false)
        .err()
        .expect("no secret must fail");
    assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
    let bad_file = t.dir.join("missing");
    let err = open_iscsi(&t.url(1), Some(&bad_file), false)
        .err()
        .expect("missing file");
    assert!(matches!(err, Error::SecretFile { .. }), "{err}");
}

#[test]
fn chap_mutual() {
    let setup = Setup {
        chap: Some(("ferry".into(), "initiatorsecret1".into())),
        mutual: Some(("target".into(), "targetsecret123".into())),
        ..Setup::default()
    };
    let t = Tgtd::start(16 * MIB, setup);
    let secret = t.dir.join("chap");
    std::fs::write(&secret, "username=ferry\npassword=initiatorsecret1\nmutual_username=target\nmutual_password=targetsecret123\n").unwrap();
    let mut disk = open_iscsi(&t.url(1), Some(&secret), false).expect("mutual CHAP");
    assert_eq!(write(disk.as_mut(), 0, &[5u8; 4096]), Ok(4096));
    drop(disk);
    std::fs::write(&secret, "username=ferry\npassword=initiatorsecret1\nmutual_username=target\nmutual_password=notthesecret1\n").unwrap();
    let err = open_iscsi(&t.url(1), Some(&secret), false)
        .err()
        .expect("target must prove itself");
    assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
}

#[test]
fn missing_lun_target_and_portal() {
    let t = Tgtd::start(MIB, Setup::default());
    let err = open_iscsi(&t.url(5), None, false)
        .err()
        .expect("LUN 5 does not exist");
    assert!(matches!(err, Error::LunNotFound { lun: 5, .. }), "{err}");
    // LUN 0 is tgtd's controller LUN, not a disk.
    let err = open_iscsi(&t.url(0), None, false)
        .err()
        .expect("LUN 0 is no disk");
    assert!(
        matches!(err, Error::NotADisk { .. } | Error::LunNotFound { .. }),
        "{err}"
    );
    let url = format!("iscsi://127.0.0.1:{}/iqn.2026-11.test:nosuchdisk/1", t.port);
    let err = open_iscsi(&url, None, false).err().expect("no such target");
    assert!(matches!(err, Error::TargetNotFound(_)), "{err}");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = open_iscsi(&format!("iscsi://127.0.0.1:{port}/{IQN}/1"), None, false)
        .err()
        .expect("unreachable");
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let err = open_iscsi("iscsi://127.0.0.1/only-target", None, false)
        .err()
        .expect("malformed");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}
