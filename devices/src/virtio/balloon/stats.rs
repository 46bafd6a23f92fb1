//! Guest memory statistics from the statistics queue (virtio 1.2 §5.5.6.3): a buffer of
//! `(le16 tag, le64 value)` pairs, 10 bytes each, packed.

use serde::{Deserialize, Serialize};

/// Size of one statistic in the guest's buffer.
pub const STAT_SIZE: usize = 10;

/// The latest value the guest reported for each statistic; `None`: never reported (a guest
/// reports only what its kernel knows). Names and units are Firecracker's `BalloonStats`
/// (bytes for memory sizes and swap, counts for the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
}

impl GuestStats {
    /// Records one `(tag, value)` pair; unknown tags (a newer guest) are ignored, as the spec
    /// asks of devices.
    pub fn record(&mut self, tag: u16, value: u64) {
        let field = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return,
        };
        *field = Some(value);
    }

    /// Records every whole statistic in `buf` (a trailing partial one is ignored). Returns how
    /// many were read.
    pub fn record_buffer(&mut self, buf: &[u8]) -> usize {
        let mut n = 0;
        for stat in buf.chunks_exact(STAT_SIZE) {
            let tag = u16::from_le_bytes([stat[0], stat[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&stat[2..]);
            self.record(tag, u64::from_le_bytes(v));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(tag: u16, v: u64) -> Vec<u8> {
        let mut b = tag.to_le_bytes().to_vec();
        b.extend_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn known_tags_recorded_unknown_and_partial_ignored() {
        let mut buf = stat(4, 1 << 20);
        buf.extend(stat(5, 64 << 20));
        buf.extend(stat(99, 7));
        buf.extend(&[1, 2, 3]);
        let mut s = GuestStats::default();
        assert_eq!(s.record_buffer(&buf), 3);
        assert_eq!(s.free_memory, Some(1 << 20));
        assert_eq!(s.total_memory, Some(64 << 20));
        assert_eq!(s.swap_in, None);
        // A later report updates what it names and keeps the rest.
        s.record_buffer(&stat(4, 5));
        assert_eq!((s.free_memory, s.total_memory), (Some(5), Some(64 << 20)));
    }
}
