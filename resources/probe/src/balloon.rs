//! The `balloon` test's pure logic: what the driver does next to follow the device's target,
//! and the statistics buffer it reports.

/// Pfns per inflate or deflate request (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX).
pub const PFNS_PER_REQUEST: u32 = 256;

/// The driver's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Give the device this many more pages.
    Inflate(u32),
    /// Take this many pages back.
    Deflate(u32),
    /// At the target (or the pool is exhausted).
    Idle,
}

/// The next request towards `target` pages when the balloon holds `actual` and the driver has
/// `pool` pages it can give, at most [`PFNS_PER_REQUEST`] at a time.
pub fn step(target: u32, actual: u32, pool: u32) -> Step {
    let target = target.min(pool);
    if target > actual {
        Step::Inflate((target - actual).min(PFNS_PER_REQUEST))
    } else if target < actual {
        Step::Deflate((actual - target).min(PFNS_PER_REQUEST))
    } else {
        Step::Idle
    }
}

/// Statistics the probe reports: minor faults (it reports its refill count there, so a host
/// sees each new report), free memory (bytes of its pool not in the balloon) and total memory.
pub const STAT_TAGS: [u16; 3] = [3, 4, 5];
/// Bytes of the statistics buffer.
pub const STATS_BYTES: usize = 10 * STAT_TAGS.len();

/// Writes `(tag, value)` pairs into `buf` in the device's format (le16 tag, le64 value).
pub fn encode_stats(buf: &mut [u8; STATS_BYTES], values: [u64; 3]) {
    for (i, (tag, value)) in STAT_TAGS.iter().zip(values).enumerate() {
        buf[10 * i..10 * i + 2].copy_from_slice(&tag.to_le_bytes());
        buf[10 * i + 2..10 * i + 10].copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_target_within_the_pool() {
        assert_eq!(step(0, 0, 100), Step::Idle);
        assert_eq!(step(1000, 0, 10_000), Step::Inflate(256));
        assert_eq!(step(1000, 900, 10_000), Step::Inflate(100));
        assert_eq!(step(1000, 0, 50), Step::Inflate(50));
        assert_eq!(step(1000, 50, 50), Step::Idle);
        assert_eq!(step(0, 300, 1000), Step::Deflate(256));
        assert_eq!(step(100, 300, 1000), Step::Deflate(200));
    }

    #[test]
    fn stats_encoding() {
        let mut b = [0u8; STATS_BYTES];
        encode_stats(&mut b, [1, 2, 3]);
        assert_eq!(&b[..2], &3u16.to_le_bytes());
        assert_eq!(&b[2..10], &1u64.to_le_bytes());
        assert_eq!(&b[20..22], &5u16.to_le_bytes());
        assert_eq!(&b[22..30], &3u64.to_le_bytes());
    }
}
