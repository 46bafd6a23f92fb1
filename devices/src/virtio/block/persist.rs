//! Save/restore of the block device model (the transport saves registers and queues).
//!
//! Order on restore: `Block::restore_state`, then `MmioTransport::restore_state`, which acks the
//! features again and re-activates the device. Before saving, pause the vCPUs and call
//! [`Block::quiesce`] so no request is in flight: the ring positions the transport saves are then
//! final, and every request the guest made is either completed or still in the avail ring.

use serde::{Deserialize, Serialize};

use super::{config, Block};
use crate::persist::{Persist, RestoreError};
use crate::rate_limiter::RateLimiterState;
use crate::storage::DiskInfo;

/// Saved state of a virtio-blk device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockState {
    /// GET_ID serial (20 bytes, zero padded).
    pub id: Vec<u8>,
    /// Capacity the guest was shown, in bytes.
    pub capacity: u64,
    pub avail_features: u64,
    pub acked_features: u64,
    /// The rate limiter's tokens (its configuration comes with the VM configuration; tokens
    /// are applied to buckets configured the same way). Absent in older snapshots.
    #[serde(default)]
    pub rate_limiter: RateLimiterState,
}

impl Persist for Block {
    type State = BlockState;

    fn save_state(&self) -> BlockState {
        if self.backend.in_flight() > 0 || self.pending.is_some() {
            log::warn!("virtio-blk: saving with requests in flight; call quiesce() first");
        }
        BlockState {
            id: self.id.to_vec(),
            capacity: self.capacity,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            rate_limiter: self.limiter.save_state(),
        }
    }

    fn restore_state(&mut self, state: &BlockState) -> Result<(), RestoreError> {
        let invalid = |reason: String| RestoreError::Invalid {
            device: "virtio-blk",
            reason,
        };
        if state.acked_features & !self.avail_features != 0 {
            return Err(invalid(format!(
                "driver features {:#x} not offered by this disk ({:#x})",
                state.acked_features, self.avail_features
            )));
        }
        let bs = u64::from(self.info.logical_block_size);
        if !state.capacity.is_multiple_of(bs) {
            return Err(invalid(format!(
                "capacity {} is not a multiple of the block size {bs}",
                state.capacity
            )));
        }
        if state.capacity > self.info.size_bytes {
            return Err(invalid(format!(
                "the guest saw {} bytes but the disk here has {}",
                state.capacity, self.info.size_bytes
            )));
        }
        if state.id.len() == super::ID_LEN {
            self.id.copy_from_slice(&state.id);
        }
        self.acked_features = state.acked_features;
        self.limiter.restore_state(&state.rate_limiter);
        // Keep what the guest saw; a larger disk here shows up at the next refresh_capacity.
        self.capacity = state.capacity;
        let info = DiskInfo {
            size_bytes: state.capacity,
            ..self.info
        };
        self.config = config::build(&info, state.capacity);
        Ok(())
    }
}
