//! virtio-blk feature bits and config space (virtio 1.2 §5.2.3, §5.2.4).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::storage::DiskInfo;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (config `seg_max`), leaving room for header and status in a
/// chain of `QUEUE_SIZE` descriptors.
pub const SEG_MAX: u32 = 126;
/// Largest discard / write-zeroes range in 512-byte sectors (one range per request).
pub const MAX_RANGE_SECTORS: u32 = 0x7f_ffff;
/// Sector unit of virtio-blk addresses, whatever the backend's block size.
pub const SECTOR_SIZE: u64 = 512;

/// Config space as far as we fill it: up to and including the secure-erase fields.
pub const CONFIG_LEN: usize = 72;

const CAPACITY: usize = 0;
const SEG_MAX_OFF: usize = 12;
const BLK_SIZE: usize = 20;
const NUM_QUEUES: usize = 34;
const MAX_DISCARD_SECTORS: usize = 36;
const MAX_DISCARD_SEG: usize = 40;
const DISCARD_SECTOR_ALIGNMENT: usize = 44;
const MAX_WRITE_ZEROES_SECTORS: usize = 48;
const MAX_WRITE_ZEROES_SEG: usize = 52;

/// Features offered for a backend with these capabilities.
pub fn features_for(info: &DiskInfo) -> u64 {
    let mut f = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_FLUSH);
    if info.read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        if info.discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if info.write_zeroes {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
    }
    f
}

/// Builds config space for a disk of `capacity_bytes` with the backend's properties.
pub fn build(info: &DiskInfo, capacity_bytes: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    put(
        &mut c,
        CAPACITY,
        &(capacity_bytes / SECTOR_SIZE).to_le_bytes(),
    );
    put(&mut c, SEG_MAX_OFF, &SEG_MAX.to_le_bytes());
    put(&mut c, BLK_SIZE, &info.logical_block_size.to_le_bytes());
    put(&mut c, NUM_QUEUES, &1u16.to_le_bytes());
    let align = (info.logical_block_size / SECTOR_SIZE as u32).max(1);
    if info.discard {
        put(
            &mut c,
            MAX_DISCARD_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(&mut c, MAX_DISCARD_SEG, &1u32.to_le_bytes());
        put(&mut c, DISCARD_SECTOR_ALIGNMENT, &align.to_le_bytes());
    }
    if info.write_zeroes {
        put(
            &mut c,
            MAX_WRITE_ZEROES_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(&mut c, MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
    }
    c
}

/// Updates the capacity field only (a resize).
pub fn set_capacity(config: &mut [u8; CONFIG_LEN], capacity_bytes: u64) {
    put(
        config,
        CAPACITY,
        &(capacity_bytes / SECTOR_SIZE).to_le_bytes(),
    );
}

/// Reads config bytes at `offset`; bytes outside config space read as zero.
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

fn put(c: &mut [u8; CONFIG_LEN], off: usize, bytes: &[u8]) {
    c[off..off + bytes.len()].copy_from_slice(bytes);
}
