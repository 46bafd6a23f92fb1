//! virtio-net feature bits and config space (virtio 1.2 §5.1.3, §5.1.4).
//!
//! Config space, little-endian: `mac[6]`, `status le16`, `max_virtqueue_pairs le16`, `mtu le16`
//! (meaningful with VIRTIO_NET_F_MTU, offered only when an MTU is configured; 0 otherwise).
//! Speed/duplex and RSS fields are not offered, so a driver never reads past byte 12.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::net::MacAddr;

/// Entries per queue. 256 keeps a full RX ring of 1.5 KiB buffers above one 64 KiB TSO frame.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of config space.
pub const CONFIG_LEN: usize = 12;

pub const fn bit(feature: u32) -> u64 {
    1 << feature
}

pub fn has(features: u64, feature: u32) -> bool {
    features & bit(feature) != 0
}

/// Features offered for a backend with `pairs` queue pairs, and VIRTIO_NET_F_MTU when an MTU is
/// configured (VERSION_1 comes from the transport). UFO/USO are not offered: the kernel dropped
/// UFO and tap USO is too recent to rely on.
pub fn features(pairs: u16, mtu: Option<u16>) -> u64 {
    let mut f = bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_ECN)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_CTRL_VQ)
        | bit(VIRTIO_NET_F_GUEST_ANNOUNCE)
        | bit(VIRTIO_RING_F_EVENT_IDX);
    if pairs > 1 {
        f |= bit(VIRTIO_NET_F_MQ);
    }
    if mtu.is_some() {
        f |= bit(VIRTIO_NET_F_MTU);
    }
    f
}

/// The config space bytes for `mac`, `status`, `max_pairs` and `mtu`.
pub fn build(mac: MacAddr, status: u16, max_pairs: u16, mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&status.to_le_bytes());
    c[8..10].copy_from_slice(&max_pairs.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

/// Copies config bytes at `offset` into `data`; bytes past the end read as zero.
pub fn read(config: &[u8; CONFIG_LEN], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= CONFIG_LEN {
        return;
    }
    let n = data.len().min(CONFIG_LEN - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let c = build(mac, 1, 4, None);
        let mut d = [0xffu8; 4];
        read(&c, 4, &mut d);
        assert_eq!(d, [0, 9, 1, 0]);
        read(&c, 8, &mut d);
        assert_eq!(d, [4, 0, 0, 0]);
        let c = build(mac, 1, 4, Some(9000));
        read(&c, 8, &mut d);
        assert_eq!(d, [4, 0, 0x28, 0x23], "mtu 9000 at offset 10");
        read(&c, 10, &mut d);
        assert_eq!(d, [0x28, 0x23, 0, 0], "nothing past the mtu");
        read(&c, 4096, &mut d);
        assert_eq!(d, [0; 4]);
        read(&c, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn mq_offered_only_with_several_pairs() {
        assert!(!has(features(1, None), VIRTIO_NET_F_MQ));
        assert!(has(features(2, None), VIRTIO_NET_F_MQ));
        assert!(has(features(1, None), VIRTIO_NET_F_CTRL_VQ));
    }

    #[test]
    fn mtu_offered_only_when_configured() {
        assert!(!has(features(1, None), VIRTIO_NET_F_MTU));
        assert!(has(features(1, Some(1400)), VIRTIO_NET_F_MTU));
    }
}
