//! PDU codec tests: round trips for every opcode, known layouts, framing with digests, and a
//! deterministic stand-in for the fuzzer.

use super::pdu::*;

fn sn() -> SeqNums {
    SeqNums {
        stat_sn: 0x1111_2222,
        exp_cmd_sn: 0x3333_4444,
        max_cmd_sn: 0x5555_6666,
    }
}

pub(crate) fn samples() -> Vec<Pdu> {
    let mut cdb = [0u8; 16];
    cdb.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8 + 1);
    vec![
        Pdu::NopOut {
            immediate: true,
            lun: 0x0001_0000_0000_0000,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 2,
            exp_stat_sn: 3,
        },
        Pdu::ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            lun: 7,
            itt: 9,
            expected_len: 4096,
            cmd_sn: 10,
            exp_stat_sn: 11,
            cdb,
        },
        Pdu::ScsiCommand {
            immediate: true,
            final_: false,
            read: false,
            write: true,
            lun: 7,
            itt: 9,
            expected_len: 1,
            cmd_sn: 10,
            exp_stat_sn: 11,
            cdb,
        },
        Pdu::LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        },
        Pdu::LoginRequest {
            transit: false,
            cont: true,
            csg: 0,
            nsg: 1,
            isid: [1; 6],
            tsih: 0x1234,
            itt: 5,
            cid: 9,
            cmd_sn: 1,
            exp_stat_sn: 7,
        },
        Pdu::DataOut {
            final_: true,
            lun: 3,
            itt: 4,
            ttt: 5,
            exp_stat_sn: 6,
            data_sn: 7,
            offset: 8,
        },
        Pdu::LogoutRequest {
            reason: 0,
            itt: 12,
            cid: 0,
            cmd_sn: 13,
            exp_stat_sn: 14,
        },
        Pdu::NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 77,
            sn: sn(),
        },
        Pdu::ScsiResponse {
            flags: FLAG_UNDERFLOW,
            response: 0,
            status: 2,
            itt: 3,
            sn: sn(),
            exp_data_sn: 4,
            residual: 512,
        },
        Pdu::LoginResponse {
            transit: true,
            cont: false,
            csg: 0,
            nsg: 1,
            version_max: 0,
            version_active: 0,
            isid: [9; 6],
            tsih: 3,
            itt: 0,
            sn: sn(),
            status_class: 2,
            status_detail: 1,
        },
        Pdu::DataIn {
            final_: true,
            flags: FLAG_OVERFLOW,
            status: Some(0),
            lun: 1,
            itt: 2,
            ttt: RESERVED_TAG,
            sn: sn(),
            data_sn: 3,
            offset: 8192,
            residual: 4,
        },
        Pdu::DataIn {
            final_: false,
            flags: 0,
            status: None,
            lun: 1,
            itt: 2,
            ttt: RESERVED_TAG,
            sn: sn(),
            data_sn: 0,
            offset: 0,
            residual: 0,
        },
        Pdu::LogoutResponse {
            response: 0,
            itt: 12,
            sn: sn(),
            time2wait: 2,
            time2retain: 20,
        },
        Pdu::R2t {
            lun: 1,
            itt: 2,
            ttt: 3,
            sn: sn(),
            r2t_sn: 4,
            offset: 65536,
            desired_len: 262144,
        },
        Pdu::AsyncMessage {
            lun: 1,
            sn: sn(),
            event: 1,
            vcode: 0,
            params: [1, 2, 3],
        },
        Pdu::Reject {
            reason: 4,
            sn: sn(),
            data_sn: 0,
        },
    ]
}

#[test]
fn round_trip_every_opcode() {
    for pdu in samples() {
        let bhs = pdu.encode(0x00ab_cdef);
        assert_eq!(data_len(&bhs), 0x00ab_cdef);
        assert_eq!(Pdu::decode(&bhs).unwrap(), pdu);
    }
}

#[test]
fn known_layouts() {
    // READ(10) of RFC 3720 B.4's example PDU: opcode 0x01, F+R+SIMPLE.
    let cmd = Pdu::ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        lun: 0,
        itt: 0x14,
        expected_len: 0x400,
        cmd_sn: 0x14,
        exp_stat_sn: 0x18,
        cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    let b = cmd.encode(0);
    assert_eq!(b[0], 0x01);
    assert_eq!(b[1], 0xc1);
    assert_eq!(&b[16..20], &[0, 0, 0, 0x14]);
    assert_eq!(&b[20..24], &[0, 0, 4, 0]);
    let login = Pdu::LoginRequest {
        transit: true,
        cont: false,
        csg: 1,
        nsg: 3,
        isid: [0; 6],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
    }
    .encode(0);
    assert_eq!((login[0], login[1]), (0x43, 0x87));
}

#[test]
fn frames_with_digests() {
    for framing in [
        Framing::default(),
        Framing {
            header_digest: true,
            data_digest: true,
        },
        Framing {
            header_digest: true,
            data_digest: false,
        },
    ] {
        let mut buf = Vec::new();
        let pdus = samples();
        for (i, p) in pdus.iter().enumerate() {
            let data: Vec<u8> = (0..i as u8 * 3).collect();
            write_frame(&mut buf, p, &data, framing);
        }
        let mut at = 0;
        for (i, p) in pdus.iter().enumerate() {
            // Every strict prefix asks for more bytes.
            let f = parse_frame(&buf[at..], framing, 1 << 16).unwrap().unwrap();
            assert_eq!(&f.pdu, p);
            assert_eq!(f.data, &(0..i as u8 * 3).collect::<Vec<u8>>()[..]);
            for cut in [0, 1, 47, f.len - 1] {
                assert!(parse_frame(&buf[at..at + cut], framing, 1 << 16)
                    .unwrap()
                    .is_none());
            }
            at += f.len;
        }
        assert_eq!(at, buf.len());
    }
}

#[test]
fn rejects_bad_digests_and_lengths() {
    let framing = Framing {
        header_digest: true,
        data_digest: true,
    };
    let mut buf = Vec::new();
    write_frame(&mut buf, &samples()[7], b"hello", framing);
    let mut bad = buf.clone();
    bad[20] ^= 1;
    assert_eq!(
        parse_frame(&bad, framing, 1024).unwrap_err(),
        PduError::HeaderDigest
    );
    let mut bad = buf.clone();
    bad[BHS_LEN + 4] ^= 1;
    assert_eq!(
        parse_frame(&bad, framing, 1024).unwrap_err(),
        PduError::DataDigest
    );
    assert!(matches!(
        parse_frame(&buf, framing, 4),
        Err(PduError::DataTooLong { .. })
    ));
    let mut bad = buf;
    bad[0] = 0x3e;
    // The header digest catches it first; without digests the opcode is refused.
    assert!(parse_frame(&bad, framing, 1024).is_err());
    let mut plain = Vec::new();
    write_frame(&mut plain, &samples()[7], b"", Framing::default());
    plain[0] = 0x3e;
    assert_eq!(
        parse_frame(&plain, Framing::default(), 1024).unwrap_err(),
        PduError::Opcode(0x3e)
    );
}

/// A deterministic stand-in for the fuzzer: thousands of random and mutated PDUs through the
/// decoder must never panic.
#[test]
fn mutated_pdus_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut corpus = Vec::new();
    for (i, p) in samples().iter().enumerate() {
        let mut v = Vec::new();
        write_frame(
            &mut v,
            p,
            &vec![i as u8; i * 5],
            Framing {
                header_digest: i % 2 == 0,
                data_digest: i % 3 == 0,
            },
        );
        corpus.push(v);
    }
    for round in 0..20_000 {
        let mut buf = corpus[round % corpus.len()].clone();
        match rnd() % 4 {
            0 => buf = (0..(rnd() % 128) as usize).map(|_| rnd() as u8).collect(),
            1 => {
                for _ in 0..(rnd() % 8 + 1) {
                    if !buf.is_empty() {
                        let i = rnd() as usize % buf.len();
                        buf[i] = rnd() as u8;
                    }
                }
            }
            2 => buf.truncate(rnd() as usize % (buf.len() + 1)),
            _ => {
                if buf.len() > 8 {
                    buf[4] = rnd() as u8;
                    buf[5..8].copy_from_slice(&(rnd() as u32).to_be_bytes()[1..]);
                }
            }
        }
        let framing = Framing {
            header_digest: rnd() % 2 == 0,
            data_digest: rnd() % 2 == 0,
        };
        let _ = parse_frame(&buf, framing, (rnd() % 70_000) as u32);
        crate::storage::iscsi::fuzzing::decode_all(&buf);
    }
}

#[test]
fn serial_numbers_and_luns() {
    assert!(sn_lt(1, 2));
    assert!(sn_lt(0xffff_fff0, 5));
    assert!(!sn_lt(5, 0xffff_fff0));
    assert!(!sn_lt(3, 3));
    assert_eq!(encode_lun(1), 0x0001_0000_0000_0000);
    assert_eq!(encode_lun(0x123), 0x4123_0000_0000_0000);
}
