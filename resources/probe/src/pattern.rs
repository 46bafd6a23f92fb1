//! The deterministic data pattern of the `blk` test's write mode (`probe.blk_write=SEED`).
//!
//! Byte `offset` of the disk (counted from sector 0) is byte `offset % 8` (little endian) of
//! `blk_pattern_u64(seed, offset / 8)`, a SplitMix64 hash of the seed and the word index. Host
//! tests reproduce the written data with [`blk_pattern`] or [`fill`].

/// SplitMix64 finalizer.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern word with index `word` (covering disk bytes `8 * word .. 8 * word + 8`).
pub const fn blk_pattern_u64(seed: u64, word: u64) -> u64 {
    mix(seed.wrapping_add(word.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// The pattern byte at disk byte `offset`.
pub const fn blk_pattern(seed: u64, offset: u64) -> u8 {
    blk_pattern_u64(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the pattern of disk bytes `offset .. offset + buf.len()`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = blk_pattern(seed, offset + i as u64);
    }
}

/// Fills `buf` (8-byte aligned `offset`, length a multiple of 8) a word at a time.
pub fn fill_words(seed: u64, offset: u64, buf: &mut [u8]) {
    let first = offset / 8;
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&blk_pattern_u64(seed, first + i as u64).to_le_bytes());
    }
}

/// Offset within `buf` of the first byte that differs from the pattern, if any.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .position(|(i, &b)| b != blk_pattern(seed, offset + i as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_words_and_depend_on_seed_and_offset() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill(7, 512, &mut a);
        fill_words(7, 512, &mut b);
        assert_eq!(a, b);
        assert_eq!(first_mismatch(7, 512, &a), None);
        assert_eq!(first_mismatch(8, 512, &a), Some(0));
        assert_ne!(blk_pattern_u64(7, 0), blk_pattern_u64(7, 1));
        assert_eq!(blk_pattern(7, 9), blk_pattern_u64(7, 1).to_le_bytes()[1]);
        a[40] ^= 1;
        assert_eq!(first_mismatch(7, 512, &a), Some(40));
        // Pinned value: host tests in other crates rely on this exact generator.
        assert_eq!(blk_pattern_u64(0, 0), mix(0x9e37_79b9_7f4a_7c15));
    }
}
