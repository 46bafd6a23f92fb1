//! virtio-rng feature bits and limits (virtio 1.2 §5.4). The device has no config space and no
//! device-specific feature bits: only the transport and ring features are offered.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Queue size offered to the driver (`requestq`, the only queue).
pub const QUEUE_SIZE: u16 = 256;

/// Most bytes one request is given. The spec lets the device use less than the whole buffer
/// (§5.4.6.2), so a guest offering gigabytes in one chain costs ferry one bounded `getrandom`
/// call per request, and the rate limiter charges what is actually delivered.
pub const MAX_REQUEST_BYTES: u32 = 64 << 10;

/// Most buffers of one chain that are filled; the rest of a longer chain is left untouched (as
/// above, the device may use less). It bounds the per-request segment list, which is allocated
/// once with the device.
pub const MAX_SEGMENTS: usize = 64;

/// Features offered: the modern interface and the ring features the shared ring code supports.
pub fn features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
}
