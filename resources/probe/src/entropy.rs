//! Checks on bytes read from an entropy device (the `rng` test). They cannot prove randomness;
//! they catch the ways a broken device fails: buffers left zero or filled with one value, too
//! few distinct byte values (a counter, a short pattern), or the same block handed out twice
//! (a stale or replayed buffer).

/// Bytes per block compared by [`repeated_block`] (the `rng` test's request size).
pub const BLOCK: usize = 4096;

/// Number of distinct byte values in `data` (0..=256).
pub fn distinct_bytes(data: &[u8]) -> u32 {
    let mut seen = [false; 256];
    for &b in data {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count() as u32
}

/// The first pair `(i, j)`, `i < j`, of equal `BLOCK`-byte blocks of `data` (a trailing partial
/// block is ignored), or `None`.
pub fn repeated_block(data: &[u8]) -> Option<(usize, usize)> {
    let blocks = data.len() / BLOCK;
    let block = |i: usize| &data[i * BLOCK..(i + 1) * BLOCK];
    for i in 0..blocks {
        for j in i + 1..blocks {
            if block(i) == block(j) {
                return Some((i, j));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_values() {
        assert_eq!(distinct_bytes(&[]), 0);
        assert_eq!(distinct_bytes(&[7; 100]), 1);
        let all: [u8; 512] = core::array::from_fn(|i| i as u8);
        assert_eq!(distinct_bytes(&all), 256);
    }

    #[test]
    fn repeated_blocks_are_found() {
        let mut data = [0u8; 3 * BLOCK + 10];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        assert_eq!(repeated_block(&data), None);
        let (a, b) = data.split_at_mut(2 * BLOCK);
        b[..BLOCK].copy_from_slice(&a[BLOCK..2 * BLOCK]);
        assert_eq!(repeated_block(&data), Some((1, 2)));
        assert_eq!(repeated_block(&data[..BLOCK]), None);
    }
}
