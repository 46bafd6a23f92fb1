//! SCSI commands ferry issues (SPC-5, SBC-4) and the interpretation of their results: CDB
//! builders, INQUIRY / VPD / READ CAPACITY parsers, and the mapping of status and sense data to
//! "done", "retry" or a [`DiskError`].

use crate::storage::DiskError;

pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
pub const STATUS_CONDITION_MET: u8 = 0x04;
pub const STATUS_BUSY: u8 = 0x08;
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;
pub const STATUS_TASK_SET_FULL: u8 = 0x28;

pub const SENSE_RECOVERED_ERROR: u8 = 0x1;
pub const SENSE_NOT_READY: u8 = 0x2;
pub const SENSE_ILLEGAL_REQUEST: u8 = 0x5;
pub const SENSE_UNIT_ATTENTION: u8 = 0x6;
pub const SENSE_ABORTED_COMMAND: u8 = 0xb;

/// ASC "logical unit not supported".
pub const ASC_LUN_NOT_SUPPORTED: u8 = 0x25;

pub fn test_unit_ready() -> [u8; 16] {
    [0; 16]
}

pub fn inquiry(vpd_page: Option<u8>, alloc: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x12;
    if let Some(p) = vpd_page {
        c[1] = 1;
        c[2] = p;
    }
    c[3..5].copy_from_slice(&alloc.to_be_bytes());
    c
}

pub fn read_capacity16(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x88, 0, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x8a, 0, lba, blocks)
}

/// SYNCHRONIZE CACHE(16) of the whole medium (LBA 0, 0 blocks).
pub fn sync_cache16() -> [u8; 16] {
    rw16(0x91, 0, 0, 0)
}

/// WRITE SAME(16) of one block of data (ferry sends zeroes) over `blocks` blocks.
pub fn write_same16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x93, 0, lba, blocks)
}

/// Length of the UNMAP parameter list ferry sends: header plus one block descriptor.
pub const UNMAP_PARAM_LEN: usize = 24;

/// UNMAP with a single descriptor; returns the CDB and fills `param`.
pub fn unmap(lba: u64, blocks: u32, param: &mut [u8; UNMAP_PARAM_LEN]) -> [u8; 16] {
    param.fill(0);
    param[0..2].copy_from_slice(&((UNMAP_PARAM_LEN - 2) as u16).to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&lba.to_be_bytes());
    param[16..20].copy_from_slice(&blocks.to_be_bytes());
    let mut c = [0u8; 16];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(UNMAP_PARAM_LEN as u16).to_be_bytes());
    c
}

/// Sense data essentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

/// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
pub fn parse_sense(s: &[u8]) -> Option<Sense> {
    match s.first()? & 0x7f {
        0x70 | 0x71 => Some(Sense {
            key: s.get(2)? & 0x0f,
            asc: s.get(12).copied().unwrap_or(0),
            ascq: s.get(13).copied().unwrap_or(0),
        }),
        0x72 | 0x73 => Some(Sense {
            key: s.get(1)? & 0x0f,
            asc: *s.get(2)?,
            ascq: *s.get(3)?,
        }),
        _ => None,
    }
}

/// Extracts sense data from a SCSI Response data segment (2-byte SenseLength, then sense).
pub fn response_sense(data: &[u8]) -> Option<Sense> {
    let len = u16::from_be_bytes([*data.first()?, *data.get(1)?]) as usize;
    parse_sense(data.get(2..2 + len)?)
}

/// What to do with a command after its status arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Transient condition (unit attention, busy, becoming ready): issue the command again.
    Retry,
    Fail(DiskError),
}

/// Maps a SCSI status and sense to an outcome.
pub fn classify(status: u8, sense: Option<Sense>) -> Outcome {
    match status {
        STATUS_GOOD | STATUS_CONDITION_MET => Outcome::Done,
        STATUS_BUSY | STATUS_TASK_SET_FULL => Outcome::Retry,
        STATUS_CHECK_CONDITION => match sense {
            None => Outcome::Fail(DiskError::Io),
            Some(s) => match s.key {
                0 => Outcome::Retry,
                SENSE_RECOVERED_ERROR => Outcome::Done,
                SENSE_UNIT_ATTENTION | SENSE_ABORTED_COMMAND => Outcome::Retry,
                // LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
                SENSE_NOT_READY if s.asc == 0x04 && s.ascq == 0x01 => Outcome::Retry,
                // Invalid command operation code, invalid field in CDB / parameter list.
                SENSE_ILLEGAL_REQUEST if matches!(s.asc, 0x20 | 0x24 | 0x26) => {
                    Outcome::Fail(DiskError::Unsupported)
                }
                _ => Outcome::Fail(DiskError::Io),
            },
        },
        _ => Outcome::Fail(DiskError::Io),
    }
}

/// Peripheral qualifier and device type from standard INQUIRY data.
pub fn inquiry_device(data: &[u8]) -> Option<(u8, u8)> {
    let b = *data.first()?;
    Some((b >> 5, b & 0x1f))
}

/// Pages listed in the Supported VPD Pages page.
pub fn vpd_pages(data: &[u8]) -> &[u8] {
    if data.len() < 4 || data[1] != 0 {
        return &[];
    }
    let n = u16::from_be_bytes([data[2], data[3]]) as usize;
    &data[4..data.len().min(4 + n)]
}

/// Block Limits VPD (0xB0) fields ferry uses; zero means "not reported / no limit".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    pub max_transfer_blocks: u32,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u64,
}

pub fn block_limits(d: &[u8]) -> Option<BlockLimits> {
    if d.len() < 16 || d[1] != 0xb0 {
        return None;
    }
    let be32 = |at: usize| {
        d.get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be64 = |at: usize| {
        d.get(at..at + 8).map_or(0, |b| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_be_bytes(w)
        })
    };
    Some(BlockLimits {
        max_transfer_blocks: be32(8),
        max_unmap_blocks: be32(20),
        max_unmap_descriptors: be32(24),
        max_write_same_blocks: be64(36),
    })
}

/// Logical Block Provisioning VPD (0xB2): (UNMAP supported, WRITE SAME(16) with UNMAP supported).
pub fn lbp(d: &[u8]) -> Option<(bool, bool)> {
    if d.len() < 6 || d[1] != 0xb2 {
        return None;
    }
    Some((d[5] & 0x80 != 0, d[5] & 0x40 != 0))
}

/// READ CAPACITY(16) data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
    /// Logical block provisioning (thin provisioning) enabled.
    pub lbpme: bool,
}

pub fn capacity(d: &[u8]) -> Option<Capacity> {
    if d.len() < 15 {
        return None;
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&d[0..8]);
    let last = u64::from_be_bytes(w);
    let block_size = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    // Only power-of-two block sizes from 512 bytes to 64 KiB make sense for a virtio disk.
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return None;
    }
    let blocks = last.checked_add(1)?;
    blocks.checked_mul(block_size as u64)?;
    Some(Capacity {
        blocks,
        block_size,
        lbpme: d[14] & 0x80 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        s
    }

    #[test]
    fn sense_mapping() {
        let c = |k, a, q| classify(STATUS_CHECK_CONDITION, parse_sense(&fixed(k, a, q)));
        assert_eq!(c(SENSE_UNIT_ATTENTION, 0x29, 0), Outcome::Retry);
        assert_eq!(c(SENSE_NOT_READY, 0x04, 0x01), Outcome::Retry);
        assert_eq!(c(SENSE_NOT_READY, 0x3a, 0), Outcome::Fail(DiskError::Io));
        assert_eq!(
            c(SENSE_ILLEGAL_REQUEST, 0x20, 0),
            Outcome::Fail(DiskError::Unsupported)
        );
        assert_eq!(
            c(SENSE_ILLEGAL_REQUEST, 0x21, 0),
            Outcome::Fail(DiskError::Io)
        );
        assert_eq!(c(0x3, 0x11, 0), Outcome::Fail(DiskError::Io)); // medium error
        assert_eq!(c(0x7, 0x27, 0), Outcome::Fail(DiskError::Io)); // write protected
        assert_eq!(c(SENSE_RECOVERED_ERROR, 0, 0), Outcome::Done);
        assert_eq!(classify(STATUS_GOOD, None), Outcome::Done);
        assert_eq!(classify(STATUS_BUSY, None), Outcome::Retry);
        assert_eq!(classify(STATUS_TASK_SET_FULL, None), Outcome::Retry);
        assert_eq!(
            classify(STATUS_RESERVATION_CONFLICT, None),
            Outcome::Fail(DiskError::Io)
        );
        assert_eq!(
            classify(STATUS_CHECK_CONDITION, None),
            Outcome::Fail(DiskError::Io)
        );
        // Descriptor format.
        let d = [0x72, SENSE_ILLEGAL_REQUEST, 0x24, 0x00, 0, 0, 0, 0];
        assert_eq!(
            classify(STATUS_CHECK_CONDITION, parse_sense(&d)),
            Outcome::Fail(DiskError::Unsupported)
        );
        // Through the iSCSI SenseLength prefix, including truncated and bogus lengths.
        let mut data = vec![0, 18];
        data.extend_from_slice(&fixed(SENSE_UNIT_ATTENTION, 0x29, 0));
        assert_eq!(
            response_sense(&data).map(|s| s.key),
            Some(SENSE_UNIT_ATTENTION)
        );
        assert_eq!(response_sense(&[0, 200, 0x70]), None);
        assert_eq!(response_sense(&[0]), None);
        assert_eq!(parse_sense(&[0x70]), None);
    }

    #[test]
    fn cdbs() {
        let r = read16(0x0102_0304_0506_0708, 0x10);
        assert_eq!(r[0], 0x88);
        assert_eq!(&r[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&r[10..14], &[0, 0, 0, 0x10]);
        assert_eq!(write16(0, 1)[0], 0x8a);
        assert_eq!(inquiry(Some(0xb0), 64)[..5], [0x12, 1, 0xb0, 0, 64]);
        let mut p = [0u8; UNMAP_PARAM_LEN];
        let u = unmap(5, 8, &mut p);
        assert_eq!(u[0], 0x42);
        assert_eq!(&u[7..9], &[0, 24]);
        assert_eq!(&p[0..4], &[0, 22, 0, 16]);
        assert_eq!(p[15], 5);
        assert_eq!(p[19], 8);
    }

    #[test]
    fn parsers() {
        let mut rc = [0u8; 32];
        rc[7] = 0xff; // last LBA 255
        rc[10] = 0x02; // 512
        rc[14] = 0x80;
        assert_eq!(
            capacity(&rc),
            Some(Capacity {
                blocks: 256,
                block_size: 512,
                lbpme: true
            })
        );
        rc[10] = 0x03;
        assert_eq!(capacity(&rc), None);
        rc[0..8].fill(0xff);
        rc[10] = 0x02;
        assert_eq!(capacity(&rc), None);
        assert_eq!(
            vpd_pages(&[0, 0, 0, 3, 0x00, 0xb0, 0xb2]),
            &[0x00, 0xb0, 0xb2]
        );
        assert_eq!(vpd_pages(&[0, 0, 0, 200, 0x00]), &[0x00]);
        let mut bl = vec![0u8; 64];
        bl[1] = 0xb0;
        bl[11] = 0x80;
        bl[23] = 0x10;
        bl[43] = 0x20;
        let l = block_limits(&bl).unwrap();
        assert_eq!(
            (
                l.max_transfer_blocks,
                l.max_unmap_blocks,
                l.max_write_same_blocks
            ),
            (0x80, 0x10, 0x20)
        );
        assert_eq!(lbp(&[0, 0xb2, 0, 4, 0, 0xc0]), Some((true, true)));
        assert_eq!(inquiry_device(&[0x7f]), Some((3, 0x1f)));
    }
}
