//! Malicious or broken targets on a local socket: opening must fail with an error, promptly,
//! without panicking or hanging.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ferry_devices::storage::iscsi::pdu::{self, Framing, Pdu, SeqNums, BHS_LEN};
use ferry_devices::storage::iscsi::{open_iscsi, Error};
use ferry_devices::storage::{DiskError, DiskOp, DiskRequest, GuestBuf};

/// Serves one connection with `script` and returns the URL to open.
fn serve(script: impl FnOnce(TcpStream) + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            script(s);
        }
    });
    format!("iscsi://127.0.0.1:{port}/iqn.2026-11.test:evil/1")
}

/// Reads one PDU (no digests); returns its BHS and data.
fn read_pdu(s: &mut TcpStream) -> Option<([u8; BHS_LEN], Vec<u8>)> {
    let mut bhs = [0u8; BHS_LEN];
    s.read_exact(&mut bhs).ok()?;
    let total = pdu::frame_len(&bhs, Framing::default(), 1 << 20).ok()?;
    let mut rest = vec![0u8; total - BHS_LEN];
    s.read_exact(&mut rest).ok()?;
    Some((bhs, rest))
}

/// Answers a login (no authentication) correctly, in as many exchanges as the initiator needs.
fn login(s: &mut TcpStream) {
    let mut stat_sn = 1;
    loop {
        let Some((bhs, _)) = read_pdu(s) else { return };
        let Ok(Pdu::LoginRequest {
            csg,
            nsg,
            transit,
            isid,
            ..
        }) = Pdu::decode(&bhs)
        else {
            return;
        };
        let rsp = Pdu::LoginResponse {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_active: 0,
            isid,
            tsih: 1,
            itt: 0,
            sn: SeqNums {
                stat_sn,
                exp_cmd_sn: 1,
                max_cmd_sn: 16,
            },
            status_class: 0,
            status_detail: 0,
        };
        stat_sn += 1;
        let mut out = Vec::new();
        let keys: &[u8] = if csg == 0 { b"AuthMethod=None\0" } else { b"" };
        pdu::write_frame(&mut out, &rsp, keys, Framing::default());
        if s.write_all(&out).is_err() || (transit && nsg == 3) {
            return;
        }
    }
}

fn expect_prompt_error(url: &str) -> Error {
    let start = Instant::now();
    let err = open_iscsi(url, None, false)
        .err()
        .expect("a hostile target must not open");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    err
}

#[test]
fn garbage_instead_of_login_response() {
    let url = serve(|mut s| {
        let _ = read_pdu(&mut s);
        let _ = s.write_all(&[0xa5u8; 4096]);
        thread::sleep(Duration::from_secs(1));
    });
    let err = expect_prompt_error(&url);
    assert!(matches!(err, Error::LoginFailed { .. }), "{err}");
}

#[test]
fn huge_data_segment_length() {
    let url = serve(|mut s| {
        let _ = read_pdu(&mut s);
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x23;
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let _ = s.write_all(&bhs);
        thread::sleep(Duration::from_secs(1));
    });
    let err = expect_prompt_error(&url);
    assert!(matches!(err, Error::LoginFailed { .. }), "{err}");
}

#[test]
fn garbage_after_login() {
    let url = serve(|mut s| {
        login(&mut s);
        // INQUIRY answered with a Data-In for a task tag that does not exist, then noise.
        let _ = read_pdu(&mut s);
        let bogus = Pdu::DataIn {
            final_: true,
            flags: 0,
            status: Some(0),
            lun: 0,
            itt: 0xdead_beef,
            ttt: u32::MAX,
            sn: SeqNums {
                stat_sn: 9,
                exp_cmd_sn: 2,
                max_cmd_sn: 16,
            },
            data_sn: 0,
            offset: 0x7fff_0000,
            residual: 0,
        };
        let mut out = Vec::new();
        pdu::write_frame(&mut out, &bogus, &[1u8; 64], Framing::default());
        out.extend_from_slice(&[0x5au8; 1000]);
        let _ = s.write_all(&out);
        thread::sleep(Duration::from_secs(1));
    });
    let err = expect_prompt_error(&url);
    assert!(matches!(err, Error::Io(_)), "{err}");
}

#[test]
fn target_hangs_up_or_goes_silent() {
    let url = serve(|mut s| {
        login(&mut s);
    });
    let err = expect_prompt_error(&url);
    assert!(matches!(err, Error::Io(_)), "{err}");
    // Accepts the TCP connection and never answers the login.
    let url = serve(|mut s| {
        let _ = read_pdu(&mut s);
        thread::sleep(Duration::from_secs(8));
    });
    let err = expect_prompt_error(&url);
    assert!(matches!(err, Error::LoginFailed { .. }), "{err}");
}

/// A minimal disk target: answers the probes and READs (with a byte pattern), answers NOP-Out
/// pings, and never completes a WRITE. Serves every connection the initiator opens.
fn hanging_writes_target() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve_disk(s));
        }
    });
    format!("iscsi://127.0.0.1:{port}/iqn.2026-11.test:evil/1?timeout=2")
}

fn serve_disk(mut s: TcpStream) {
    login(&mut s);
    let mut stat_sn = 100u32;
    while let Some((bhs, _)) = read_pdu(&mut s) {
        let pdu = Pdu::decode(&bhs);
        let (itt, cmd_sn, cdb, expected) = match pdu {
            Ok(Pdu::ScsiCommand {
                itt,
                cmd_sn,
                cdb,
                expected_len,
                ..
            }) => (itt, cmd_sn, cdb, expected_len),
            Ok(Pdu::NopOut { itt, cmd_sn, .. }) if itt != u32::MAX => {
                let sn = SeqNums {
                    stat_sn,
                    exp_cmd_sn: cmd_sn,
                    max_cmd_sn: cmd_sn + 16,
                };
                stat_sn += 1;
                let mut out = Vec::new();
                pdu::write_frame(
                    &mut out,
                    &Pdu::NopIn {
                        lun: 0,
                        itt,
                        ttt: u32::MAX,
                        sn,
                    },
                    &[],
                    Framing::default(),
                );
                let _ = s.write_all(&out);
                continue;
            }
            _ => continue,
        };
        let mut data = match (cdb[0], cdb[1] & 1, cdb[2]) {
            (0x12, 0, _) => {
                let mut d = vec![0u8; 36];
                d[4] = 31;
                d
            }
            (0x12, 1, 0) => vec![0, 0, 0, 1, 0],
            (0x9e, _, _) => {
                let mut d = vec![0u8; 32];
                d[6..8].copy_from_slice(&2047u16.to_be_bytes());
                d[10] = 2;
                d
            }
            (0x1a, _, _) => vec![3, 0, 0, 0],
            (0x88, _, _) => (0..expected).map(|i| (i % 251) as u8).collect(),
            (0x8a, _, _) => continue,
            _ => Vec::new(),
        };
        data.truncate(expected as usize);
        let residual = expected - data.len() as u32;
        let sn = SeqNums {
            stat_sn,
            exp_cmd_sn: cmd_sn + 1,
            max_cmd_sn: cmd_sn + 16,
        };
        stat_sn += 1;
        let flags = if residual > 0 { pdu::FLAG_UNDERFLOW } else { 0 };
        let rsp = if data.is_empty() {
            Pdu::ScsiResponse {
                flags,
                response: 0,
                status: 0,
                itt,
                sn,
                exp_data_sn: 0,
                residual,
            }
        } else {
            Pdu::DataIn {
                final_: true,
                flags,
                status: Some(0),
                lun: 0,
                itt,
                ttt: u32::MAX,
                sn,
                data_sn: 0,
                offset: 0,
                residual,
            }
        };
        let mut out = Vec::new();
        pdu::write_frame(&mut out, &rsp, &data, Framing::default());
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

#[test]
fn command_that_never_completes_fails_after_timeout() {
    let url = hanging_writes_target();
    let mut disk = open_iscsi(&url, None, false).expect("the fake disk opens");
    assert_eq!(disk.info().size_bytes, 2048 * 512);
    // Reads work and land in the right place.
    let mut buf = vec![0u8; 8192];
    let b = [GuestBuf {
        ptr: buf.as_mut_ptr(),
        len: 8192,
    }];
    disk.submit(&DiskRequest {
        tag: 1,
        op: DiskOp::Read,
        offset: 4096,
        len: 8192,
        bufs: &b,
    })
    .unwrap();
    disk.kick().unwrap();
    let fd = disk.notifier().unwrap();
    let mut done = Vec::new();
    let wait = |disk: &mut Box<dyn ferry_devices::storage::DiskBackend>, done: &mut Vec<_>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.is_empty() && Instant::now() < deadline {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 100) };
            disk.poll_completions(done);
        }
    };
    wait(&mut disk, &mut done);
    assert_eq!(done[0].result, Ok(8192));
    assert!(buf.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8));
    // A write the target sits on: dropped, re-issued on a new connection, then failed.
    let start = Instant::now();
    disk.submit(&DiskRequest {
        tag: 2,
        op: DiskOp::Write,
        offset: 0,
        len: 8192,
        bufs: &b,
    })
    .unwrap();
    disk.kick().unwrap();
    done.clear();
    wait(&mut disk, &mut done);
    assert_eq!(
        done.first().map(|c| (c.tag, c.result)),
        Some((2, Err(DiskError::Io)))
    );
    let t = start.elapsed();
    assert!(
        t >= Duration::from_secs(2) && t < Duration::from_secs(20),
        "{t:?}"
    );
    drop(disk);
    drop(buf);
}
