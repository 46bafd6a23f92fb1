//! A hostile target, deterministically: thousands of plausible-but-wrong PDU sequences (task tags
//! of live and dead commands, offsets and lengths around the transfer bounds, R2T floods, pings,
//! async events, random bytes) are fed to a session with commands in flight. Nothing may panic
//! or touch memory outside the guest buffers (the fuzz harness owns them).

use super::fuzzing::session_feed;
use super::pdu::{write_frame, Framing, Pdu, SeqNums, RESERVED_TAG};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.next() as usize % v.len()]
    }
}

/// Tags the harness's commands get: slots 0..3 with generations 1..3, and the admin slot.
const LIVE_ITTS: [u32; 4] = [0x1_0000, 0x2_0001, 0x3_0002, 0x4_0040];

fn random_pdu(r: &mut Rng) -> (Pdu, Vec<u8>) {
    let itt = if r.next() & 7 == 0 {
        r.next() as u32
    } else {
        r.pick(&LIVE_ITTS)
    };
    let sn = SeqNums {
        stat_sn: r.next() as u32 % 4,
        exp_cmd_sn: r.next() as u32 % 8,
        max_cmd_sn: r.pick(&[0, 8, 64, u32::MAX]),
    };
    let offset = r.pick(&[0u32, 512, 4096, 8192, 16383, 16384, 65536, u32::MAX - 10]);
    let len = r.pick(&[0usize, 1, 512, 4096, 8192, 9000]);
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let pdu = match r.next() % 8 {
        0 | 1 => Pdu::DataIn {
            final_: r.next() & 1 == 0,
            flags: r.pick(&[0, 2, 4]),
            status: r.pick(&[None, Some(0), Some(2)]),
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            sn,
            data_sn: 0,
            offset,
            residual: r.next() as u32 % 9000,
        },
        2 => Pdu::R2t {
            lun: 0,
            itt,
            ttt: r.next() as u32,
            sn,
            r2t_sn: 0,
            offset,
            desired_len: r.pick(&[0, 1, 4096, 16384, u32::MAX]),
        },
        3 => {
            let mut sense = vec![0, 18, 0x70, 0, r.pick(&[2u8, 5, 6, 0xb, 3]), 0, 0, 0, 0, 10];
            sense.resize(20, 0);
            sense[14] = r.pick(&[0x04, 0x20, 0x25, 0x29]);
            sense.truncate(r.next() as usize % 21);
            return (
                Pdu::ScsiResponse {
                    flags: r.pick(&[0, 2, 4]),
                    response: r.pick(&[0, 0, 1]),
                    status: r.pick(&[0, 2, 8, 0x18, 0x28]),
                    itt,
                    sn,
                    exp_data_sn: 0,
                    residual: r.next() as u32 % 9000,
                },
                sense,
            );
        }
        4 => Pdu::NopIn {
            lun: 0,
            itt: r.pick(&[RESERVED_TAG, 0xfffe, itt]),
            ttt: r.pick(&[RESERVED_TAG, 5]),
            sn,
        },
        5 => Pdu::AsyncMessage {
            lun: 0,
            sn,
            event: r.next() as u8 % 6,
            vcode: 0,
            params: [0; 3],
        },
        6 => Pdu::Reject {
            reason: 9,
            sn,
            data_sn: 0,
        },
        _ => Pdu::LoginResponse {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_active: 0,
            isid: [0; 6],
            tsih: 1,
            itt,
            sn,
            status_class: 0,
            status_detail: 0,
        },
    };
    (pdu, data)
}

#[test]
fn hostile_pdu_sequences_never_panic() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for _ in 0..3000 {
        let flags = r.next() as u8 % 4;
        let framing = Framing {
            header_digest: flags & 1 != 0,
            data_digest: flags & 2 != 0,
        };
        let mut stream = vec![flags];
        for _ in 0..(r.next() % 12 + 1) {
            let (pdu, data) = random_pdu(&mut r);
            write_frame(&mut stream, &pdu, &data, framing);
        }
        // Sometimes corrupt a byte or cut the stream short.
        match r.next() % 4 {
            0 if stream.len() > 1 => {
                let i = 1 + r.next() as usize % (stream.len() - 1);
                stream[i] = r.next() as u8;
            }
            1 => stream.truncate(r.next() as usize % (stream.len() + 1)),
            _ => {}
        }
        session_feed(&stream);
    }
}

/// A well-behaved target completes every command: the harness's read sees its data, the
/// write's R2T is served, and nothing faults.
#[test]
fn well_formed_sequence_completes() {
    let sn = SeqNums {
        stat_sn: 0,
        exp_cmd_sn: 1,
        max_cmd_sn: 64,
    };
    let mut s = vec![0u8];
    let f = Framing::default();
    write_frame(
        &mut s,
        &Pdu::DataIn {
            final_: true,
            flags: 0,
            status: Some(0),
            lun: 0,
            itt: LIVE_ITTS[0],
            ttt: RESERVED_TAG,
            sn,
            data_sn: 0,
            offset: 0,
            residual: 0,
        },
        &[7u8; 8192],
        f,
    );
    write_frame(
        &mut s,
        &Pdu::R2t {
            lun: 0,
            itt: LIVE_ITTS[1],
            ttt: 9,
            sn,
            r2t_sn: 0,
            offset: 0,
            desired_len: 16384,
        },
        &[],
        f,
    );
    write_frame(
        &mut s,
        &Pdu::ScsiResponse {
            flags: 0,
            response: 0,
            status: 0,
            itt: LIVE_ITTS[1],
            sn,
            exp_data_sn: 0,
            residual: 0,
        },
        &[],
        f,
    );
    assert_eq!(super::session::fuzz_feed_checked(&s), 0);
}
