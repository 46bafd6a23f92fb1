//! Split virtqueue layout (virtio 1.2 section 2.7) and ring-index arithmetic.
//!
//! The probe places each queue in one contiguous, 4 KiB-aligned block: the descriptor table
//! (16 bytes per entry), then the driver ("available") ring (4 + 2n bytes + used_event), then, at
//! the next 4-byte boundary, the device ("used") ring (4 + 8n bytes + avail_event).

/// Descriptor flag: the buffer continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Offsets of a split virtqueue's parts within its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLayout {
    /// Queue size (entries).
    pub size: u16,
    /// Offset of the driver ring.
    pub avail: usize,
    /// Offset of the device ring.
    pub used: usize,
    /// Total bytes.
    pub total: usize,
}

impl SplitLayout {
    /// The layout for a queue of `size` entries (a power of two, 1..=32768), or `None`.
    pub const fn new(size: u16) -> Option<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return None;
        }
        let n = size as usize;
        let avail = 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        Some(SplitLayout {
            size,
            avail,
            used,
            total: used + 6 + 8 * n,
        })
    }

    /// Offset of descriptor `i`.
    pub const fn desc(&self, i: u16) -> usize {
        16 * (i as usize % self.size as usize)
    }

    /// Offset of driver-ring slot for free-running index `idx`.
    pub const fn avail_slot(&self, idx: u16) -> usize {
        self.avail + 4 + 2 * (idx % self.size) as usize
    }

    /// Offset of device-ring element for free-running index `idx` (id u32, len u32).
    pub const fn used_elem(&self, idx: u16) -> usize {
        self.used + 4 + 8 * (idx % self.size) as usize
    }
}

/// Number of device-ring entries published since `last_seen`, given the device's `used_idx`
/// (both free-running u16 counters). A value above the queue size means a misbehaving device.
pub const fn pending(last_seen: u16, used_idx: u16) -> u16 {
    used_idx.wrapping_sub(last_seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_math() {
        let l = SplitLayout::new(16).unwrap();
        assert_eq!((l.avail, l.used, l.total), (256, 296, 430));
        let l = SplitLayout::new(256).unwrap();
        assert_eq!((l.avail, l.used), (4096, 4096 + 520));
        assert_eq!(l.desc(257), 16);
        assert_eq!(l.avail_slot(65535), 4096 + 4 + 2 * 255);
        assert_eq!(l.used_elem(256), 4096 + 520 + 4);
        assert_eq!(SplitLayout::new(0), None);
        assert_eq!(SplitLayout::new(12), None);
    }

    #[test]
    fn pending_wraps() {
        assert_eq!(pending(65534, 2), 4);
        assert_eq!(pending(5, 5), 0);
        assert_eq!(pending(0, 3), 3);
    }
}
