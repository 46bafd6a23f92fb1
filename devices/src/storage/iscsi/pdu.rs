//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment of every PDU ferry sends or
//! receives, and the framing around it (AHS, header digest, data segment, padding, data digest).
//!
//! Decoding is hostile-input parsing: every length is checked against the buffer and against the
//! data segment limit we declared, unknown opcodes and reserved values are errors, and nothing here
//! panics on any input (see the deterministic mutation test and `devices/fuzz`).

use super::digest::crc32c;

/// Size of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The reserved task tag / target transfer tag value.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Why bytes could not be decoded as a PDU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("unknown or unexpected opcode {0:#04x}")]
    Opcode(u8),
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: u32, max: u32 },
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Login stages (CSG/NSG).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// Sequence numbers carried by every target-to-initiator status PDU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl SeqNums {
    fn read(b: &[u8]) -> Self {
        SeqNums {
            stat_sn: get32(b, 24),
            exp_cmd_sn: get32(b, 28),
            max_cmd_sn: get32(b, 32),
        }
    }
    fn write(&self, b: &mut [u8]) {
        put32(b, 24, self.stat_sn);
        put32(b, 28, self.exp_cmd_sn);
        put32(b, 32, self.max_cmd_sn);
    }
}

/// Every PDU type ferry uses, in both directions (the target-side ones are encoded by tests'
/// fake targets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    NopOut {
        immediate: bool,
        lun: u64,
        itt: u32,
        ttt: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
    },
    ScsiCommand {
        immediate: bool,
        final_: bool,
        read: bool,
        write: bool,
        lun: u64,
        itt: u32,
        expected_len: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
        cdb: [u8; 16],
    },
    LoginRequest {
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        isid: [u8; 6],
        tsih: u16,
        itt: u32,
        cid: u16,
        cmd_sn: u32,
        exp_stat_sn: u32,
    },
    DataOut {
        final_: bool,
        lun: u64,
        itt: u32,
        ttt: u32,
        exp_stat_sn: u32,
        data_sn: u32,
        offset: u32,
    },
    LogoutRequest {
        reason: u8,
        itt: u32,
        cid: u16,
        cmd_sn: u32,
        exp_stat_sn: u32,
    },
    NopIn {
        lun: u64,
        itt: u32,
        ttt: u32,
        sn: SeqNums,
    },
    ScsiResponse {
        /// Bits o/u/O/U of byte 1 (0x10, 0x08, 0x04, 0x02).
        flags: u8,
        response: u8,
        status: u8,
        itt: u32,
        sn: SeqNums,
        exp_data_sn: u32,
        residual: u32,
    },
    LoginResponse {
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        version_max: u8,
        version_active: u8,
        isid: [u8; 6],
        tsih: u16,
        itt: u32,
        sn: SeqNums,
        status_class: u8,
        status_detail: u8,
    },
    DataIn {
        final_: bool,
        /// Bits A/O/U of byte 1 (0x40, 0x04, 0x02).
        flags: u8,
        status: Option<u8>,
        lun: u64,
        itt: u32,
        ttt: u32,
        sn: SeqNums,
        data_sn: u32,
        offset: u32,
        residual: u32,
    },
    LogoutResponse {
        response: u8,
        itt: u32,
        sn: SeqNums,
        time2wait: u16,
        time2retain: u16,
    },
    R2t {
        lun: u64,
        itt: u32,
        ttt: u32,
        sn: SeqNums,
        r2t_sn: u32,
        offset: u32,
        desired_len: u32,
    },
    AsyncMessage {
        lun: u64,
        sn: SeqNums,
        event: u8,
        vcode: u8,
        params: [u16; 3],
    },
    Reject {
        reason: u8,
        sn: SeqNums,
        data_sn: u32,
    },
}

/// Residual flags in SCSI Response / Data-In byte 1.
pub const FLAG_UNDERFLOW: u8 = 0x02;
pub const FLAG_OVERFLOW: u8 = 0x04;

const OP_NOP_OUT: u8 = 0x00;
const OP_SCSI_CMD: u8 = 0x01;
const OP_LOGIN_REQ: u8 = 0x03;
const OP_DATA_OUT: u8 = 0x05;
const OP_LOGOUT_REQ: u8 = 0x06;
const OP_NOP_IN: u8 = 0x20;
const OP_SCSI_RSP: u8 = 0x21;
const OP_LOGIN_RSP: u8 = 0x23;
const OP_DATA_IN: u8 = 0x25;
const OP_LOGOUT_RSP: u8 = 0x26;
const OP_R2T: u8 = 0x31;
const OP_ASYNC: u8 = 0x32;
const OP_REJECT: u8 = 0x3f;

fn stages(b1: u8) -> (bool, bool, u8, u8) {
    (b1 & 0x80 != 0, b1 & 0x40 != 0, (b1 >> 2) & 3, b1 & 3)
}

fn stage_byte(transit: bool, cont: bool, csg: u8, nsg: u8) -> u8 {
    (if transit { 0x80 } else { 0 }) | (if cont { 0x40 } else { 0 }) | ((csg & 3) << 2) | (nsg & 3)
}

impl Pdu {
    /// Encodes the BHS with `data_len` in DataSegmentLength and no AHS.
    pub fn encode(&self, data_len: u32) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        let imm = |i: bool| if i { 0x40 } else { 0 };
        match *self {
            Pdu::NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = OP_NOP_OUT | imm(immediate);
                b[1] = 0x80;
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, ttt);
                put32(&mut b, 24, cmd_sn);
                put32(&mut b, 28, exp_stat_sn);
            }
            Pdu::ScsiCommand {
                immediate,
                final_,
                read,
                write,
                lun,
                itt,
                expected_len,
                cmd_sn,
                exp_stat_sn,
                cdb,
            } => {
                b[0] = OP_SCSI_CMD | imm(immediate);
                // Task attribute SIMPLE (1).
                b[1] = (if final_ { 0x80 } else { 0 })
                    | (if read { 0x40 } else { 0 })
                    | (if write { 0x20 } else { 0 })
                    | 1;
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, expected_len);
                put32(&mut b, 24, cmd_sn);
                put32(&mut b, 28, exp_stat_sn);
                b[32..48].copy_from_slice(&cdb);
            }
            Pdu::LoginRequest {
                transit,
                cont,
                csg,
                nsg,
                isid,
                tsih,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = OP_LOGIN_REQ | 0x40;
                b[1] = stage_byte(transit, cont, csg, nsg);
                b[8..14].copy_from_slice(&isid);
                put16(&mut b, 14, tsih);
                put32(&mut b, 16, itt);
                put16(&mut b, 20, cid);
                put32(&mut b, 24, cmd_sn);
                put32(&mut b, 28, exp_stat_sn);
            }
            Pdu::DataOut {
                final_,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                offset,
            } => {
                b[0] = OP_DATA_OUT;
                b[1] = if final_ { 0x80 } else { 0 };
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, ttt);
                put32(&mut b, 28, exp_stat_sn);
                put32(&mut b, 36, data_sn);
                put32(&mut b, 40, offset);
            }
            Pdu::LogoutRequest {
                reason,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = OP_LOGOUT_REQ | 0x40;
                b[1] = 0x80 | (reason & 0x7f);
                put32(&mut b, 16, itt);
                put16(&mut b, 20, cid);
                put32(&mut b, 24, cmd_sn);
                put32(&mut b, 28, exp_stat_sn);
            }
            Pdu::NopIn { lun, itt, ttt, sn } => {
                b[0] = OP_NOP_IN;
                b[1] = 0x80;
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, ttt);
                sn.write(&mut b);
            }
            Pdu::ScsiResponse {
                flags,
                response,
                status,
                itt,
                sn,
                exp_data_sn,
                residual,
            } => {
                b[0] = OP_SCSI_RSP;
                b[1] = 0x80 | (flags & 0x1e);
                b[2] = response;
                b[3] = status;
                put32(&mut b, 16, itt);
                sn.write(&mut b);
                put32(&mut b, 36, exp_data_sn);
                put32(&mut b, 44, residual);
            }
            Pdu::LoginResponse {
                transit,
                cont,
                csg,
                nsg,
                version_max,
                version_active,
                isid,
                tsih,
                itt,
                sn,
                status_class,
                status_detail,
            } => {
                b[0] = OP_LOGIN_RSP;
                b[1] = stage_byte(transit, cont, csg, nsg);
                b[2] = version_max;
                b[3] = version_active;
                b[8..14].copy_from_slice(&isid);
                put16(&mut b, 14, tsih);
                put32(&mut b, 16, itt);
                sn.write(&mut b);
                b[36] = status_class;
                b[37] = status_detail;
            }
            Pdu::DataIn {
                final_,
                flags,
                status,
                lun,
                itt,
                ttt,
                sn,
                data_sn,
                offset,
                residual,
            } => {
                b[0] = OP_DATA_IN;
                b[1] =
                    (if final_ { 0x80 } else { 0 }) | (flags & 0x46) | u8::from(status.is_some());
                b[3] = status.unwrap_or(0);
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, ttt);
                sn.write(&mut b);
                put32(&mut b, 36, data_sn);
                put32(&mut b, 40, offset);
                put32(&mut b, 44, residual);
            }
            Pdu::LogoutResponse {
                response,
                itt,
                sn,
                time2wait,
                time2retain,
            } => {
                b[0] = OP_LOGOUT_RSP;
                b[1] = 0x80;
                b[2] = response;
                put32(&mut b, 16, itt);
                sn.write(&mut b);
                put16(&mut b, 40, time2wait);
                put16(&mut b, 42, time2retain);
            }
            Pdu::R2t {
                lun,
                itt,
                ttt,
                sn,
                r2t_sn,
                offset,
                desired_len,
            } => {
                b[0] = OP_R2T;
                b[1] = 0x80;
                put64(&mut b, 8, lun);
                put32(&mut b, 16, itt);
                put32(&mut b, 20, ttt);
                sn.write(&mut b);
                put32(&mut b, 36, r2t_sn);
                put32(&mut b, 40, offset);
                put32(&mut b, 44, desired_len);
            }
            Pdu::AsyncMessage {
                lun,
                sn,
                event,
                vcode,
                params,
            } => {
                b[0] = OP_ASYNC;
                b[1] = 0x80;
                put64(&mut b, 8, lun);
                put32(&mut b, 16, RESERVED_TAG);
                sn.write(&mut b);
                b[36] = event;
                b[37] = vcode;
                put16(&mut b, 38, params[0]);
                put16(&mut b, 40, params[1]);
                put16(&mut b, 42, params[2]);
            }
            Pdu::Reject {
                reason,
                sn,
                data_sn,
            } => {
                b[0] = OP_REJECT;
                b[1] = 0x80;
                b[2] = reason;
                put32(&mut b, 16, RESERVED_TAG);
                sn.write(&mut b);
                put32(&mut b, 36, data_sn);
            }
        }
        b[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        b
    }

    /// Decodes a BHS. Lengths are not interpreted here; see [`frame_len`].
    pub fn decode(b: &[u8; BHS_LEN]) -> Result<Pdu, PduError> {
        let op = b[0] & 0x3f;
        let immediate = b[0] & 0x40 != 0;
        let lun = get64(b, 8);
        let itt = get32(b, 16);
        let sn = SeqNums::read(b);
        Ok(match op {
            OP_NOP_OUT => Pdu::NopOut {
                immediate,
                lun,
                itt,
                ttt: get32(b, 20),
                cmd_sn: get32(b, 24),
                exp_stat_sn: get32(b, 28),
            },
            OP_SCSI_CMD => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Pdu::ScsiCommand {
                    immediate,
                    final_: b[1] & 0x80 != 0,
                    read: b[1] & 0x40 != 0,
                    write: b[1] & 0x20 != 0,
                    lun,
                    itt,
                    expected_len: get32(b, 20),
                    cmd_sn: get32(b, 24),
                    exp_stat_sn: get32(b, 28),
                    cdb,
                }
            }
            OP_LOGIN_REQ => {
                let (transit, cont, csg, nsg) = stages(b[1]);
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Pdu::LoginRequest {
                    transit,
                    cont,
                    csg,
                    nsg,
                    isid,
                    tsih: get16(b, 14),
                    itt,
                    cid: get16(b, 20),
                    cmd_sn: get32(b, 24),
                    exp_stat_sn: get32(b, 28),
                }
            }
            OP_DATA_OUT => Pdu::DataOut {
                final_: b[1] & 0x80 != 0,
                lun,
                itt,
                ttt: get32(b, 20),
                exp_stat_sn: get32(b, 28),
                data_sn: get32(b, 36),
                offset: get32(b, 40),
            },
            OP_LOGOUT_REQ => Pdu::LogoutRequest {
                reason: b[1] & 0x7f,
                itt,
                cid: get16(b, 20),
                cmd_sn: get32(b, 24),
                exp_stat_sn: get32(b, 28),
            },
            OP_NOP_IN => Pdu::NopIn {
                lun,
                itt,
                ttt: get32(b, 20),
                sn,
            },
            OP_SCSI_RSP => Pdu::ScsiResponse {
                flags: b[1] & 0x1e,
                response: b[2],
                status: b[3],
                itt,
                sn,
                exp_data_sn: get32(b, 36),
                residual: get32(b, 44),
            },
            OP_LOGIN_RSP => {
                let (transit, cont, csg, nsg) = stages(b[1]);
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Pdu::LoginResponse {
                    transit,
                    cont,
                    csg,
                    nsg,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: get16(b, 14),
                    itt,
                    sn,
                    status_class: b[36],
                    status_detail: b[37],
                }
            }
            OP_DATA_IN => Pdu::DataIn {
                final_: b[1] & 0x80 != 0,
                flags: b[1] & 0x46,
                status: (b[1] & 0x01 != 0).then_some(b[3]),
                lun,
                itt,
                ttt: get32(b, 20),
                sn,
                data_sn: get32(b, 36),
                offset: get32(b, 40),
                residual: get32(b, 44),
            },
            OP_LOGOUT_RSP => Pdu::LogoutResponse {
                response: b[2],
                itt,
                sn,
                time2wait: get16(b, 40),
                time2retain: get16(b, 42),
            },
            OP_R2T => Pdu::R2t {
                lun,
                itt,
                ttt: get32(b, 20),
                sn,
                r2t_sn: get32(b, 36),
                offset: get32(b, 40),
                desired_len: get32(b, 44),
            },
            OP_ASYNC => Pdu::AsyncMessage {
                lun,
                sn,
                event: b[36],
                vcode: b[37],
                params: [get16(b, 38), get16(b, 40), get16(b, 42)],
            },
            OP_REJECT => Pdu::Reject {
                reason: b[2],
                sn,
                data_sn: get32(b, 36),
            },
            other => return Err(PduError::Opcode(other)),
        })
    }
}

/// Which digests are in force on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Data segment length field of a BHS.
pub fn data_len(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

/// Bytes of padding after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Total length on the wire of the PDU whose BHS is `bhs`, after checking the data segment
/// against `max_data` (the MaxRecvDataSegmentLength we declared).
pub fn frame_len(bhs: &[u8; BHS_LEN], framing: Framing, max_data: u32) -> Result<usize, PduError> {
    let dlen = data_len(bhs);
    if dlen > max_data {
        return Err(PduError::DataTooLong {
            len: dlen,
            max: max_data,
        });
    }
    let ahs = bhs[4] as usize * 4;
    let mut n = BHS_LEN + ahs + dlen as usize + pad_len(dlen as usize);
    if framing.header_digest {
        n += 4;
    }
    if framing.data_digest && dlen > 0 {
        n += 4;
    }
    Ok(n)
}

/// A decoded PDU and its data segment, borrowed from the receive buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub pdu: Pdu,
    pub data: &'a [u8],
    /// Bytes of the buffer this PDU occupied.
    pub len: usize,
}

/// Decodes one PDU from the front of `buf`. `Ok(None)` means more bytes are needed. AHS contents
/// are skipped (ferry negotiates nothing that uses them); digests are verified.
pub fn parse_frame(
    buf: &[u8],
    framing: Framing,
    max_data: u32,
) -> Result<Option<Frame<'_>>, PduError> {
    let Some(bhs) = buf.first_chunk::<BHS_LEN>() else {
        return Ok(None);
    };
    let total = frame_len(bhs, framing, max_data)?;
    if buf.len() < total {
        return Ok(None);
    }
    let hdr_end = BHS_LEN + bhs[4] as usize * 4;
    let mut at = hdr_end;
    if framing.header_digest {
        let want = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if crc32c(&buf[..hdr_end]) != want {
            return Err(PduError::HeaderDigest);
        }
        at += 4;
    }
    let pdu = Pdu::decode(bhs)?;
    let dlen = data_len(bhs) as usize;
    let data = &buf[at..at + dlen];
    if framing.data_digest && dlen > 0 {
        let padded = &buf[at..at + dlen + pad_len(dlen)];
        let d = at + padded.len();
        let want = u32::from_le_bytes([buf[d], buf[d + 1], buf[d + 2], buf[d + 3]]);
        if crc32c(padded) != want {
            return Err(PduError::DataDigest);
        }
    }
    Ok(Some(Frame {
        pdu,
        data,
        len: total,
    }))
}

/// Appends a whole PDU (BHS, header digest, data, padding, data digest) to `out`.
pub fn write_frame(out: &mut Vec<u8>, pdu: &Pdu, data: &[u8], framing: Framing) {
    let bhs = pdu.encode(data.len() as u32);
    out.extend_from_slice(&bhs);
    if framing.header_digest {
        out.extend_from_slice(&crc32c(&bhs).to_le_bytes());
    }
    let start = out.len();
    out.extend_from_slice(data);
    out.resize(out.len() + pad_len(data.len()), 0);
    if framing.data_digest && !data.is_empty() {
        let d = crc32c(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// RFC 1982 serial comparison `a < b` for 32-bit sequence numbers.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// Encodes a LUN number in the 8-byte LUN field (SAM-5 peripheral or flat addressing).
pub fn encode_lun(lun: u16) -> u64 {
    let first = if lun < 256 {
        0u64
    } else {
        0x40 | (lun as u64 >> 8)
    };
    (first << 56) | ((lun as u64 & 0xff) << 48)
}
