//! virtio-vsock feature bits, queues and config space (virtio 1.2 §5.10).

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Queue indexes.
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;

/// Queue size offered for each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// Smallest CID a guest may have (0–2 are the hypervisor, local and host addresses).
pub const MIN_GUEST_CID: u64 = 3;

/// Largest CID: Linux's `struct sockaddr_vm` carries 32 bits (and `VMADDR_CID_ANY` is
/// `u32::MAX`), although the header field is 64 bits wide.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest must drop every connection (after a
/// snapshot restore or a migration, where the host side's sockets are gone).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Features offered: the modern interface and the ring features the shared ring code supports.
/// Only stream sockets (no VIRTIO_VSOCK_F_SEQPACKET).
pub fn features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
}

/// Config space: `le64 guest_cid`, the only field.
pub fn read_config(guest_cid: u64, offset: u64, data: &mut [u8]) {
    let space = guest_cid.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| space.get(at))
            .copied()
            .unwrap_or(0);
    }
}
