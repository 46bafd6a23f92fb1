//! The virtio-net header as it travels between the guest and the tap (the "vnet header"), and
//! the mapping from negotiated virtio features to tap offloads.
//!
//! With VIRTIO_F_VERSION_1 the header is 12 bytes, little-endian (virtio 1.2 §5.1.6):
//! `flags u8, gso_type u8, hdr_len le16, gso_size le16, csum_start le16, csum_offset le16,
//! num_buffers le16`. The tap is told the same size with TUNSETVNETHDRSZ, so the kernel reads and
//! writes the first ten bytes in place and leaves `num_buffers` alone: the device fills it in. On
//! x86 the tap's native byte order is little-endian, so no field needs swapping.
//!
//! Both directions are checked against what was negotiated: a frame whose header uses an offload
//! the other side did not accept is dropped rather than handed over.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};

/// Length of the virtio-net header with VERSION_1 (and of the tap's vnet header).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

fn has(features: u64, feature: u32) -> bool {
    features & bit(feature) != 0
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HdrError {
    /// GSO type the receiving side did not negotiate (or unknown).
    Gso(u8),
    /// Checksum offload flag the receiving side did not negotiate.
    Csum,
}

/// The tap offloads (TUN_F_*) matching the guest's receive features: the kernel may then hand
/// us frames with partial checksums or GSO, which the guest said it can take. TSO needs
/// checksum offload, as in the kernel, so an inconsistent feature set degrades to fewer
/// offloads instead of an ioctl error.
pub fn tun_offload_flags(acked_features: u64) -> u32 {
    if !has(acked_features, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(acked_features, VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(acked_features, VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        && has(acked_features, VIRTIO_NET_F_GUEST_ECN)
    {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if has(acked_features, VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// Checks a GSO type against the features of the side that will receive the frame.
fn check_gso(
    gso_type: u8,
    features: u64,
    tso4: u32,
    tso6: u32,
    ecn: u32,
    ufo: u32,
) -> Result<(), HdrError> {
    let base = u32::from(gso_type) & !VIRTIO_NET_HDR_GSO_ECN;
    let ecn_ok = u32::from(gso_type) & VIRTIO_NET_HDR_GSO_ECN == 0 || has(features, ecn);
    let ok = match base {
        VIRTIO_NET_HDR_GSO_NONE => u32::from(gso_type) == VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(features, tso4) && ecn_ok,
        VIRTIO_NET_HDR_GSO_TCPV6 => has(features, tso6) && ecn_ok,
        VIRTIO_NET_HDR_GSO_UDP => has(features, ufo) && ecn_ok,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(HdrError::Gso(gso_type))
    }
}

/// Prepares a header read from the tap for the guest: checks it only uses offloads the guest
/// negotiated, drops DATA_VALID when the guest did not negotiate GUEST_CSUM (the spec allows
/// the flag only then), and writes `num_buffers` (1 without MRG_RXBUF).
pub fn fix_rx_header(
    hdr: &mut [u8; VNET_HDR_LEN],
    features: u64,
    num_buffers: u16,
) -> Result<(), HdrError> {
    check_gso(
        hdr[1],
        features,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    )?;
    if !has(features, VIRTIO_NET_F_GUEST_CSUM) {
        if u32::from(hdr[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            return Err(HdrError::Csum);
        }
        hdr[0] &= !(VIRTIO_NET_HDR_F_DATA_VALID as u8);
    }
    hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers.to_le_bytes());
    Ok(())
}

/// Checks a header the guest wrote before the frame goes to the tap: only offloads the device
/// offered and the guest accepted (HOST_*, CSUM). The kernel validates offsets itself.
pub fn check_tx_header(hdr: &[u8; VNET_HDR_LEN], features: u64) -> Result<(), HdrError> {
    check_gso(
        hdr[1],
        features,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_HOST_UFO,
    )?;
    if u32::from(hdr[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(features, VIRTIO_NET_F_CSUM) {
        return Err(HdrError::Csum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_ALL: u64 = bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN);

    #[test]
    fn offloads_follow_guest_features() {
        assert_eq!(tun_offload_flags(0), 0);
        assert_eq!(
            tun_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            tun_offload_flags(GUEST_ALL),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        // TSO without checksum offload is not a valid combination: nothing is enabled.
        assert_eq!(tun_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        // ECN alone means nothing without TSO.
        assert_eq!(
            tun_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_ECN)),
            libc::TUN_F_CSUM
        );
        // Host (TX) features do not change what the tap may send us.
        assert_eq!(
            tun_offload_flags(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_CSUM)),
            0
        );
    }

    fn hdr(flags: u32, gso: u32) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags as u8;
        h[1] = gso as u8;
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&1448u16.to_le_bytes());
        h[10..12].copy_from_slice(&0xbeefu16.to_le_bytes());
        h
    }

    #[test]
    fn rx_header_gets_num_buffers_and_keeps_gso_fields() {
        let mut h = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4);
        fix_rx_header(&mut h, GUEST_ALL, 3).unwrap();
        assert_eq!(&h[10..12], &3u16.to_le_bytes());
        assert_eq!(h[0], VIRTIO_NET_HDR_F_NEEDS_CSUM as u8);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1448);
        assert_eq!(u16::from_le_bytes([h[2], h[3]]), 54);
    }

    #[test]
    fn rx_header_refuses_offloads_the_guest_lacks() {
        let mut h = hdr(0, VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(
            fix_rx_header(
                &mut h,
                bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4),
                1
            ),
            Err(HdrError::Gso(VIRTIO_NET_HDR_GSO_TCPV6 as u8))
        );
        let mut h = hdr(0, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN);
        assert!(fix_rx_header(&mut h, GUEST_ALL & !bit(VIRTIO_NET_F_GUEST_ECN), 1).is_err());
        let mut h = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
        assert_eq!(fix_rx_header(&mut h, 0, 1), Err(HdrError::Csum));
        let mut h = hdr(0, 0x42);
        assert!(fix_rx_header(&mut h, GUEST_ALL, 1).is_err());
    }

    #[test]
    fn rx_header_clears_data_valid_without_guest_csum() {
        let mut h = hdr(VIRTIO_NET_HDR_F_DATA_VALID, 0);
        fix_rx_header(&mut h, 0, 1).unwrap();
        assert_eq!(h[0], 0);
        let mut h = hdr(VIRTIO_NET_HDR_F_DATA_VALID, 0);
        fix_rx_header(&mut h, bit(VIRTIO_NET_F_GUEST_CSUM), 1).unwrap();
        assert_eq!(h[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
    }

    #[test]
    fn tx_header_checked_against_host_features() {
        let host = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
        assert!(check_tx_header(
            &hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4),
            host
        )
        .is_ok());
        assert!(check_tx_header(&hdr(0, VIRTIO_NET_HDR_GSO_TCPV6), host).is_err());
        assert!(check_tx_header(&hdr(0, VIRTIO_NET_HDR_GSO_UDP), host).is_err());
        assert_eq!(
            check_tx_header(&hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0), 0),
            Err(HdrError::Csum)
        );
        assert!(check_tx_header(&hdr(0, 0), 0).is_ok());
    }
}
