//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and the checks every header from the
//! guest goes through before the device acts on it.
//!
//! Guest data is hostile: a header is parsed from bytes the guest may change at any time, so it
//! is copied out once and then validated as a plain value; nothing here can panic on any input.

/// Bytes of `struct virtio_vsock_hdr` (packed, little-endian).
pub const HDR_LEN: usize = 44;

/// The host's context id: guest packets must be addressed to it.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type the device offers (no
/// VIRTIO_VSOCK_F_SEQPACKET).
pub const TYPE_STREAM: u16 = 1;

/// Largest payload of one packet, in either direction (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
/// A guest header claiming more is malformed.
pub const MAX_PAYLOAD: u32 = 64 << 10;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header as plain values (copied out of guest memory, or built by the device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

fn le16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    pub fn parse(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// What to do with a guest packet that failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped silently (counted): answering could only confuse a driver that cannot even name
    /// itself, or would answer a reset with a reset.
    Drop,
    /// Answered with RST from the address the guest targeted, so the guest's socket fails fast
    /// instead of waiting (an unknown type or op, a CID other than the host's) and any
    /// connection it names is closed (a malformed packet in a stream corrupts the stream).
    Reset,
}

/// A guest packet the device refuses, and why (logged at debug level, counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPacket {
    /// The chain holds fewer than [`HDR_LEN`] device-readable bytes.
    ShortHeader,
    /// The TX chain has a device-writable descriptor.
    WritableBuffer,
    /// `len` is larger than [`MAX_PAYLOAD`] or than the bytes the chain actually holds.
    BadLength,
    /// `src_cid` is not the guest's own CID.
    SourceCid,
    /// `dst_cid` is not the host's.
    DestinationCid,
    /// `type` is not STREAM.
    Type,
    /// `op` is not one of the seven operations.
    Op,
}

impl BadPacket {
    pub fn verdict(self, h: &Header) -> Verdict {
        match self {
            BadPacket::ShortHeader | BadPacket::WritableBuffer | BadPacket::SourceCid => {
                Verdict::Drop
            }
            _ if h.op == Op::Rst as u16 => Verdict::Drop,
            _ => Verdict::Reset,
        }
    }
}

/// Checks a header the guest put on its TX queue; `payload_avail` is the number of readable
/// bytes the chain holds after the header. Returns the operation when the packet may be acted on.
pub fn validate_tx(h: &Header, guest_cid: u64, payload_avail: usize) -> Result<Op, BadPacket> {
    if h.src_cid != guest_cid {
        return Err(BadPacket::SourceCid);
    }
    if h.len > MAX_PAYLOAD || h.len as usize > payload_avail {
        return Err(BadPacket::BadLength);
    }
    if h.dst_cid != HOST_CID {
        return Err(BadPacket::DestinationCid);
    }
    if h.type_ != TYPE_STREAM {
        return Err(BadPacket::Type);
    }
    Op::from_u16(h.op).ok_or(BadPacket::Op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 10,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = good();
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn every_field_is_checked() {
        assert_eq!(validate_tx(&good(), 3, 10), Ok(Op::Rw));
        let with = |f: fn(&mut Header)| {
            let mut h = good();
            f(&mut h);
            h
        };
        let h = with(|h| h.src_cid = 4);
        assert_eq!(validate_tx(&h, 3, 10), Err(BadPacket::SourceCid));
        assert_eq!(BadPacket::SourceCid.verdict(&h), Verdict::Drop);
        // Longer than the chain, or than any packet may be.
        assert_eq!(validate_tx(&good(), 3, 9), Err(BadPacket::BadLength));
        let h = with(|h| h.len = MAX_PAYLOAD + 1);
        assert_eq!(validate_tx(&h, 3, usize::MAX), Err(BadPacket::BadLength));
        let h = with(|h| h.dst_cid = 7);
        assert_eq!(validate_tx(&h, 3, 10), Err(BadPacket::DestinationCid));
        assert_eq!(BadPacket::DestinationCid.verdict(&h), Verdict::Reset);
        let h = with(|h| h.type_ = 2);
        assert_eq!(validate_tx(&h, 3, 10), Err(BadPacket::Type));
        for op in [0u16, 8, 0xffff] {
            let h = Header { op, ..good() };
            assert_eq!(validate_tx(&h, 3, 10), Err(BadPacket::Op), "op {op}");
        }
        // A bad RST is never answered with another RST.
        let h = with(|h| {
            h.type_ = 9;
            h.op = Op::Rst as u16
        });
        assert_eq!(BadPacket::Type.verdict(&h), Verdict::Drop);
        for op in 1..=7u16 {
            let h = Header {
                op,
                len: 0,
                ..good()
            };
            assert!(validate_tx(&h, 3, 0).is_ok(), "op {op}");
        }
    }
}
