//! CRC32C (Castagnoli), the iSCSI header and data digest (RFC 7143 §13.1, test vectors in RFC 3720
//! appendix B.4).
//!
//! The digest travels on the wire least-significant byte first. The SSE4.2 `crc32` instruction
//! computes exactly this polynomial, so it is used when the host has it; a table-driven
//! slicing-by-8 fallback gives the same result everywhere else.

/// Reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Eight 256-entry tables for slicing-by-8, built at compile time.
static TABLES: [[u32; 256]; 8] = build_tables();

const fn build_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// An incremental CRC32C computation, so that a digest can cover a data segment, its padding
/// and data gathered from several guest buffers without concatenating them.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(0xFFFF_FFFF)
    }

    /// Feeds `data` into the running CRC.
    pub fn update(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                // SAFETY: the CPU supports SSE4.2, checked just above.
                self.0 = unsafe { update_sse42(self.0, data) };
                return;
            }
        }
        self.0 = update_table(self.0, data);
    }

    /// The final digest value.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC32C of one buffer.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

/// The portable slicing-by-8 implementation.
fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ b as u32) & 0xff) as usize];
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc64 = crc as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        crc64 = _mm_crc32_u64(crc64, u64::from_le_bytes(w));
    }
    let mut crc = crc64 as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 appendix B.4 vectors; the RFC lists the digest bytes in wire order.
    fn vectors() -> Vec<(Vec<u8>, [u8; 4])> {
        let read_pdu: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
            0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        vec![
            (vec![0u8; 32], [0xaa, 0x36, 0x91, 0x8a]),
            (vec![0xffu8; 32], [0x43, 0xab, 0xa8, 0x62]),
            ((0u8..32).collect(), [0x4e, 0x79, 0xdd, 0x46]),
            ((0u8..32).rev().collect(), [0x5c, 0xdb, 0x3f, 0x11]),
            (read_pdu.to_vec(), [0x56, 0x3a, 0x96, 0xd9]),
        ]
    }

    #[test]
    fn rfc3720_vectors() {
        for (data, wire) in vectors() {
            assert_eq!(crc32c(&data).to_le_bytes(), wire);
            assert_eq!((!update_table(!0, &data)).to_le_bytes(), wire);
        }
    }

    #[test]
    fn check_value_and_incremental() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let mut c = Crc32c::new();
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.finish(), crc32c(&data));
            assert_eq!(!update_table(!0, &data), crc32c(&data));
        }
    }
}
