//! Field checks shared by every request body.
//!
//! Everything here runs on the API thread before a request reaches the VMM, so the VMM can rely
//! on ids, paths and MACs being well formed. Each check returns the fault message a client sees.

/// Longest id (`drive_id`, `iface_id`) accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest host path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest `boot_args` accepted, in bytes (x86 `COMMAND_LINE_SIZE`).
pub const MAX_BOOT_ARGS_LEN: usize = 2048;
/// Longest network interface name on Linux, without the NUL (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// An id is 1 to 64 characters of `[A-Za-z0-9_-]`: safe in paths, metric labels and logs.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{what} must be 1 to {MAX_ID_LEN} characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{what} may contain only A-Z, a-z, 0-9, '_' and '-'"
        ));
    }
    Ok(())
}

/// A host path: non-empty, no NUL (the kernel would truncate it), at most `PATH_MAX`.
pub fn check_path(what: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("{what} is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.contains('\0') {
        return Err(format!("{what} must not contain a NUL character"));
    }
    Ok(())
}

/// Text handed to the guest or to logs: no NUL, bounded length.
pub fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if text.contains('\0') {
        return Err(format!("{what} must not contain a NUL character"));
    }
    Ok(())
}

/// A drive's backing store: a host path, or (ferry extension) an `iscsi://` URL whose finer
/// syntax the iSCSI backend checks when it opens the drive.
pub fn check_drive_path(path: &str) -> Result<(), String> {
    check_path("path_on_host", path)?;
    if let Some(rest) = path.strip_prefix("iscsi://") {
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("path_on_host: an iscsi:// URL needs a portal and a target, without spaces or control characters".into());
        }
    }
    Ok(())
}

/// A Linux network interface name: 1 to 15 printable ASCII bytes, no '/', ':' or space.
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!("{what} must be 1 to {MAX_IFNAME_LEN} bytes long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{what} is not a valid interface name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return Err(format!(
            "{what} may contain only printable ASCII other than '/' and ':', without spaces"
        ));
    }
    Ok(())
}

/// Parses a unicast MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(what: &str, mac: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{what} must be six hex octets separated by ':', like 06:00:ac:10:00:02");
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if out[0] & 1 != 0 {
        return Err(format!(
            "{what} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("drive_id", "rootfs").is_ok());
        assert!(check_id("drive_id", "a-B_9").is_ok());
        assert!(check_id("drive_id", &"x".repeat(64)).is_ok());
        assert!(check_id("drive_id", &"x".repeat(65)).is_err());
        assert!(check_id("drive_id", "").is_err());
        for bad in ["a b", "a/b", "a.b", "é", "a\0", "../x"] {
            assert!(check_id("drive_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("p", "/a/b").is_ok());
        assert!(check_path("p", "").is_err());
        assert!(check_path("p", "/a\0b").is_err());
        assert!(check_path("p", &"a".repeat(4097)).is_err());
        assert!(check_drive_path("iscsi://127.0.0.1:3260/iqn.2026-11.test:disk0/1").is_ok());
        assert!(check_drive_path("iscsi://").is_err());
        assert!(check_drive_path("iscsi://host/ iqn/1").is_err());
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("n", "tap0").is_ok());
        assert!(check_ifname("n", "macvtap-long-15").is_ok());
        assert!(check_ifname("n", "macvtap-long-16x").is_err());
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "a\n", "a\u{a0}"] {
            assert!(check_ifname("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("m", "06:00:AC:10:00:02"),
            Ok([6, 0, 0xac, 0x10, 0, 2])
        );
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "6:0:ac:10:0:2",
            "zz:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "06-00-ac-10-00-02",
            "+6:00:ac:10:00:02",
        ] {
            assert!(parse_mac("m", bad).is_err(), "{bad:?}");
        }
    }
}
