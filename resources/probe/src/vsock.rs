//! The virtio-vsock packet header as the probe's driver writes and reads it (virtio 1.2
//! §5.10.6): 44 little-endian bytes.

pub const HDR_LEN: usize = 44;
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

pub const SHUTDOWN_BOTH: u32 = 3;

/// A header as values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Hdr {
    /// Parses the first [`HDR_LEN`] bytes of `b` (which must hold them).
    pub fn parse(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64::from(u32_at(b, 0)) | u64::from(u32_at(b, 4)) << 32,
            dst_cid: u64::from(u32_at(b, 8)) | u64::from(u32_at(b, 12)) << 32,
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn write(&self, b: &mut [u8; HDR_LEN]) {
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
    }
}

/// Bytes the peer can take: its `buf_alloc` less what was sent and not yet forwarded.
pub fn credit(buf_alloc: u32, sent: u32, fwd_cnt: u32) -> u32 {
    buf_alloc.saturating_sub(sent.wrapping_sub(fwd_cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_credit() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 1,
            buf_alloc: 65536,
            fwd_cnt: 9,
        };
        let mut b = [0u8; HDR_LEN];
        h.write(&mut b);
        assert_eq!(b[30], 5);
        assert_eq!(Hdr::parse(&b), h);
        assert_eq!(credit(100, 50, 20), 70);
        assert_eq!(credit(100, 5, u32::MAX), 94, "wrapping counters");
        assert_eq!(credit(100, 300, 0), 0);
    }
}
