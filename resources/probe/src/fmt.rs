//! Report-line formatting into a fixed buffer (no `core::fmt`: it costs thousands of emulated
//! instructions per line in ring 0).

/// Capacity of a report line.
pub const LINE_MAX: usize = 256;

/// A line being built; text beyond [`LINE_MAX`] is dropped.
pub struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuf {
    /// An empty line.
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(LINE_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    /// Appends a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends one byte.
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.bytes(&[b])
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&tmp[i..])
    }

    /// Appends `v` as `digits` lowercase hex digits (no prefix).
    pub fn hex_fixed(&mut self, v: u64, digits: u32) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for k in (0..digits.min(16)).rev() {
            self.byte(HEX[((v >> (4 * k)) & 15) as usize]);
        }
        self
    }

    /// Appends `0x` and `v` in minimal lowercase hex.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let digits = (64 - (v | 1).leading_zeros()).div_ceil(4);
        self.str("0x").hex_fixed(v, digits)
    }

    /// Appends a MAC address as `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&mut self, mac: &[u8; 6]) -> &mut Self {
        for (i, b) in mac.iter().enumerate() {
            if i > 0 {
                self.byte(b':');
            }
            self.hex_fixed(u64::from(*b), 2);
        }
        self
    }

    /// Appends a dotted-quad IPv4 address.
    pub fn ip(&mut self, ip: &[u8; 4]) -> &mut Self {
        for (i, b) in ip.iter().enumerate() {
            if i > 0 {
                self.byte(b'.');
            }
            self.dec(u64::from(*b));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let mut l = LineBuf::new();
        l.str("probe: ")
            .dec(0)
            .byte(b' ')
            .dec(18446744073709551615)
            .byte(b' ');
        l.hex_fixed(0xcbf43926, 8)
            .byte(b' ')
            .hex_fixed(0x1a, 8)
            .byte(b' ')
            .hex(0)
            .byte(b' ');
        l.hex(0xfee00300)
            .byte(b' ')
            .mac(&[0x52, 0x54, 0, 0x12, 0x34, 0xab])
            .byte(b' ');
        l.ip(&[10, 0, 2, 15]);
        assert_eq!(
            l.as_bytes(),
            b"probe: 0 18446744073709551615 cbf43926 0000001a 0x0 0xfee00300 52:54:00:12:34:ab 10.0.2.15"
        );
    }

    #[test]
    fn truncates() {
        let mut l = LineBuf::new();
        for _ in 0..100 {
            l.str("abcd");
        }
        assert_eq!(l.as_bytes().len(), LINE_MAX);
    }
}
