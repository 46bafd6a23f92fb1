//! The 4 KiB text the `serial` test prints: 64 lines of 64 bytes. Line `i` (0..64) is
//! `"serial XX "` (XX = `i` in two lowercase hex digits), then 53 printable characters
//! `b'!' + (i + j) % 94` for j in 0..53, then `'\n'`.

/// Size of the text.
pub const SERIAL_TEXT_LEN: usize = 4096;

/// Writes the text into `buf`.
pub fn serial_text(buf: &mut [u8; SERIAL_TEXT_LEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, line) in buf.chunks_exact_mut(64).enumerate() {
        line[..7].copy_from_slice(b"serial ");
        line[7] = HEX[i >> 4];
        line[8] = HEX[i & 15];
        line[9] = b' ';
        for (j, c) in line[10..63].iter_mut().enumerate() {
            *c = b'!' + ((i + j) % 94) as u8;
        }
        line[63] = b'\n';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_checksum() {
        let mut t = [0u8; SERIAL_TEXT_LEN];
        serial_text(&mut t);
        assert!(t.starts_with(b"serial 00 !\"#"));
        assert_eq!(&t[64..74], b"serial 01 ");
        assert_eq!(t.iter().filter(|&&b| b == b'\n').count(), 64);
        assert!(t.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)));
        // Pinned so a change is deliberate (host tests compare against the printed crc32).
        assert_eq!(crate::crc32::crc32(&t), 0xb119_fbba);
    }
}
