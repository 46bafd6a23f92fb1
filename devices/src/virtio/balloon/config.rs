//! virtio-balloon feature bits, queue layout and config space (virtio 1.2 §5.5).

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The statistics queue exists (§5.5.3). Offered only when statistics are enabled: the spec
/// says the queue is absent otherwise, and Linux then never sends statistics.
pub const F_STATS_VQ: u32 = 1;
/// The guest may take pages back from the balloon when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u32 = 2;
/// The guest reports free pages on the reporting queue; the host may drop them.
pub const F_REPORTING: u32 = 5;

/// Queue size offered for every queue.
pub const QUEUE_SIZE: u16 = 256;

/// Balloon page size: page frame numbers on the inflate and deflate queues are in 4 KiB units
/// whatever the guest's own page size (§5.5.6).
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// 4 KiB pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;

/// Page frame numbers gathered before they are sorted, coalesced and released: one madvise per
/// contiguous range of the batch. Linux sends 256 per request; the batch spans several.
pub const PFN_BATCH: usize = 2048;

/// Largest statistics buffer read (tag + value pairs of 10 bytes). The spec defines 16 tags;
/// a longer buffer is read up to this bound, so a hostile driver cannot make the device thread
/// walk gigabytes.
pub const MAX_STATS_BYTES: u32 = 64 * 10;

/// Config space: `num_pages` (device-written target) at 0, `actual` (driver-written) at 4.
/// The free page hint command id and the poison value (8, 12) belong to features not offered
/// and read as zero.
pub const CONFIG_NUM_PAGES: u64 = 0;
pub const CONFIG_ACTUAL: u64 = 4;
pub const CONFIG_SIZE: u64 = 16;

/// Queue indices (§5.5.2): inflate, deflate, then statistics and reporting when offered.
pub const INFLATE: usize = 0;
pub const DEFLATE: usize = 1;

/// What the device offers, from its settings.
pub fn features(stats: bool, deflate_on_oom: bool, reporting: bool) -> u64 {
    let mut f = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC);
    if stats {
        f |= 1 << F_STATS_VQ;
    }
    if deflate_on_oom {
        f |= 1 << F_DEFLATE_ON_OOM;
    }
    if reporting {
        f |= 1 << F_REPORTING;
    }
    f
}

/// 4 KiB pages in `mib` MiB.
pub fn mib_to_pages(mib: u32) -> u32 {
    mib.saturating_mul(PAGES_PER_MIB)
}

/// Whole MiB in `pages` 4 KiB pages.
pub fn pages_to_mib(pages: u32) -> u32 {
    pages / PAGES_PER_MIB
}
