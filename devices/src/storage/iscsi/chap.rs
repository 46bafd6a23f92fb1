//! CHAP with MD5 (RFC 1994, as used by iSCSI in RFC 7143 §12.1.3) and the MD5 digest itself
//! (RFC 1321), implemented here because it is small and CHAP is its only user.
//!
//! A CHAP response is `MD5(id || secret || challenge)`. iSCSI carries identifiers in decimal and
//! challenges/responses as `0x`-prefixed hex (base64 `0b` is also legal and accepted on input).

/// Per-round shift amounts (RFC 1321 §3.4).
const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321 §3.4).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// MD5 of the concatenation of `parts`.
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut state: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut block = [0u8; 64];
    let mut fill = 0usize;
    for part in parts {
        for &b in *part {
            block[fill] = b;
            fill += 1;
            if fill == 64 {
                md5_block(&mut state, &block);
                fill = 0;
            }
        }
    }
    // Padding: 0x80, zeroes, then the bit length little-endian in the last 8 bytes.
    block[fill] = 0x80;
    fill += 1;
    if fill > 56 {
        block[fill..].fill(0);
        md5_block(&mut state, &block);
        fill = 0;
    }
    block[fill..56].fill(0);
    block[56..].copy_from_slice(&((total as u64).wrapping_mul(8)).to_le_bytes());
    md5_block(&mut state, &block);
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn md5_block(state: &mut [u32; 4], block: &[u8; 64]) {
    let mut m = [0u32; 16];
    for (i, w) in m.iter_mut().enumerate() {
        *w = u32::from_le_bytes([
            block[i * 4],
            block[i * 4 + 1],
            block[i * 4 + 2],
            block[i * 4 + 3],
        ]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let tmp = d;
        d = c;
        c = b;
        b = b.wrapping_add(
            a.wrapping_add(f)
                .wrapping_add(K[i])
                .wrapping_add(m[g])
                .rotate_left(S[i]),
        );
        a = tmp;
    }
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// The CHAP response for identifier `id`, shared `secret` and the peer's `challenge`.
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    md5(&[&[id], secret, challenge])
}

/// Longest challenge accepted from a target (RFC 7143 §12.1.3 bounds binary values at 1024 bytes).
pub const MAX_CHALLENGE: usize = 1024;

/// Encodes bytes as iSCSI hex (`0x...`).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes an iSCSI binary value (`0x` hex or `0b` base64), refusing anything malformed or longer
/// than [`MAX_CHALLENGE`] bytes.
pub fn from_binary(s: &str) -> Option<Vec<u8>> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > MAX_CHALLENGE * 2 {
            return None;
        }
        // An odd number of digits means a leading zero nibble.
        let padded;
        let hex = if hex.len() % 2 == 1 {
            padded = format!("0{hex}");
            padded.as_str()
        } else {
            hex
        };
        let mut out = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks_exact(2) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        }
        return Some(out);
    }
    if let Some(b64) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        return from_base64(b64);
    }
    None
}

fn from_base64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > MAX_CHALLENGE * 2 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if out.len() > MAX_CHALLENGE {
        return None;
    }
    Some(out)
}

/// Fills `buf` with random bytes from the kernel (for mutual-CHAP challenges and identifiers).
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn md5_rfc1321_suite() {
        let cases: [(&str, &str); 7] = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&md5(&[input.as_bytes()])), want, "{input:?}");
        }
        // Split input gives the same digest as one buffer.
        assert_eq!(
            md5(&[b"mess", b"age dig", b"est"]),
            md5(&[b"message digest"])
        );
    }

    #[test]
    fn chap_response_vectors() {
        // Digests computed independently (Python hashlib) over id || secret || challenge.
        assert_eq!(
            hex(&chap_response(1, b"secret", &[0, 1, 2, 3])),
            "e82cb2ed1efe04893c9cf73d4dd12e2d"
        );
        let challenge = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(
            hex(&chap_response(0x2a, b"password", &challenge)),
            "0a4782d451538d04d947da8468664e65"
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(from_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(from_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(from_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(from_binary("0x"), None);
        assert_eq!(from_binary("0xzz"), None);
        assert_eq!(from_binary("12"), None);
        assert_eq!(
            from_binary(&format!("0x{}", "00".repeat(MAX_CHALLENGE + 1))),
            None
        );
        assert_eq!(to_hex(&[0xde, 0xad]), "0xdead");
        let mut r = [0u8; 16];
        random_bytes(&mut r).unwrap();
    }
}
