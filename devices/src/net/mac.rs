//! Ethernet MAC addresses as the operator writes them (`52:54:00:12:34:56`).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// The text is not six `:`-separated hex byte pairs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address `{0}`: expected six hex byte pairs like 52:54:00:12:34:56")]
pub struct BadMac(pub String);

impl MacAddr {
    /// Group (multicast/broadcast) addresses cannot be a NIC's own address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// A random unicast, locally administered address (bit 1 of the first byte set, bit 0
    /// clear), so it never collides with a vendor-assigned one.
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: fall back on the pid and clock, still unique enough per host.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            b[2..6].copy_from_slice(&(t ^ std::process::id()).to_le_bytes());
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }
}

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!(!m.is_multicast());
    }

    #[test]
    fn rejects_bad_text() {
        for s in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
            "525400123456",
            "52-54-00-12-34-56",
        ] {
            assert_eq!(s.parse::<MacAddr>(), Err(BadMac(s.to_string())), "{s}");
        }
    }

    #[test]
    fn random_is_local_unicast() {
        let m = MacAddr::random_local();
        assert_eq!(m.0[0] & 3, 2);
    }
}
